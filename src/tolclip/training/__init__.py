"""Training: LightningModules, optimiser schedule, callbacks and the training run itself."""
