"""Command-line edge: the `tolclip` command and its subcommands (the only place with hydra.main or argparse)."""
