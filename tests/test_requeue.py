"""A requeued job continues its run: the newest checkpoint of its own run folder (Lightning's
hpc_ckpt_* included), the same wandb run, and -- end to end under a fake SLURM -- the weights an
uninterrupted run ends with."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
import torch

from tolclip.training.resume import newest_checkpoint, resume_path, wandb_run_id
from tolclip.training.run import resolve_ckpt

from helpers import SYNTHETIC_MICRO, make_cfg

TOLCLIP = Path(sys.executable).with_name("tolclip")


def _ckpt(path: Path, step: int, age_s: float = 0.0) -> Path:
    """A small real torch archive standing in for a checkpoint, written `age_s` seconds ago."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step}, path)
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_auto_and_last_take_the_newest_checkpoint_of_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert resolve_ckpt("auto", str(run)) is None  # a fresh run folder: start from scratch
    with pytest.raises(FileNotFoundError, match="ckpt_path=last but the run folder .* has no checkpoint"):
        resolve_ckpt("last", str(run))
    step = _ckpt(run / "checkpoints" / "step_000008.ckpt", 8, age_s=30)
    (run / "checkpoints" / "last.ckpt").symlink_to(step.name)  # ModelCheckpoint's save_last=link
    assert resolve_ckpt("last", str(run)) == str(step.resolve())
    # The requeue signal wrote Lightning's hpc checkpoint after the last epoch-end one.
    hpc = _ckpt(run / "hpc_ckpt_1.ckpt", 12, age_s=10)
    assert resolve_ckpt("auto", str(run)) == resolve_ckpt("last", str(run)) == str(hpc.resolve())
    hpc2 = _ckpt(run / "hpc_ckpt_2.ckpt", 14, age_s=10)  # same second: Lightning's counter decides
    os.utime(hpc2, ns=(hpc.stat().st_atime_ns, hpc.stat().st_mtime_ns))
    assert newest_checkpoint(run) == hpc2.resolve()
    # The job was killed while writing a newer one: that one is passed over, not loaded.
    (run / "hpc_ckpt_3.ckpt").write_bytes(hpc.read_bytes()[:100])
    assert newest_checkpoint(run) == hpc2.resolve()
    # An explicit path starts the run; once the run folder has its own checkpoints, a restart of
    # the same command continues from those instead of going back to the start.
    start = _ckpt(tmp_path / "pretrained.ckpt", 0, age_s=100)
    assert resume_path(str(start), tmp_path / "elsewhere") == str(start)
    assert resolve_ckpt(str(start), str(run)) == str(hpc2.resolve())
    with pytest.raises(FileNotFoundError, match="ckpt_path: checkpoint .* does not exist"):
        resolve_ckpt(str(tmp_path / "typo.ckpt"), str(run))  # a typo is still an error


def test_train_defaults_to_auto_resume() -> None:
    cfg = make_cfg(Path("/nonexistent"), [])
    assert cfg.ckpt_path == "auto"


def test_a_restarted_job_gets_the_same_wandb_run(tmp_path: Path) -> None:
    first = make_cfg(tmp_path, ["logger=wandb"])
    logger = hydra.utils.instantiate(first.logger.wandb, _convert_="all")
    run_id = logger.version  # the id it will create the run with (no run is started here)
    assert run_id == (tmp_path / "run" / "wandb_id.txt").read_text() == wandb_run_id(tmp_path / "run")
    assert logger._wandb_init["resume"] == "allow" and logger._offline  # offline by default
    again = hydra.utils.instantiate(make_cfg(tmp_path, ["logger=wandb"]).logger.wandb, _convert_="all")
    assert again.version == run_id  # the requeued job, same run folder
    other = hydra.utils.instantiate(make_cfg(tmp_path / "b", ["logger=wandb"]).logger.wandb, _convert_="all")
    assert other.version != run_id  # another run folder, another wandb run
    chosen = make_cfg(tmp_path / "c", ["logger=wandb", "logger.wandb.id=abc123"])
    assert hydra.utils.instantiate(chosen.logger.wandb, _convert_="all").version == "abc123"
    (tmp_path / "d" / "run").mkdir(parents=True)
    (tmp_path / "d" / "run" / "wandb_id.txt").write_text("not/an id")
    with pytest.raises(ValueError, match="not a wandb run id"):
        wandb_run_id(tmp_path / "d" / "run")


# --- end to end: SIGUSR1 under a fake SLURM, requeue, same job id, new process --------------------

# Written into the test's folder and imported by the training process: sends the requeue signal to
# its own process at one step, as SLURM's `--signal=SIGUSR1@90` would at some point of the run.
PROBE = """
import os, signal
from lightning.pytorch.callbacks import Callback

class SignalAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)
"""
# What `scontrol requeue` does on a cluster, for the test: note the call, then end the job (SLURM
# sends SIGTERM to a job it requeues).
SCONTROL = '#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\nkill -TERM $PPID\n'

RUN = [
    *SYNTHETIC_MICRO,
    "logger=[csv,wandb]",
    "data.batch_size=16",
    "data.epoch_samples=128",  # 8 steps an epoch
    "trainer.max_epochs=3",
    "trainer.log_every_n_steps=1",
]
SIGNAL_STEP = 12  # in the middle of the second epoch


def _slurm_env(tmp_path: Path, restart: int) -> dict[str, str]:
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "tolclip-test",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NODELIST": "localhost",
        "SLURM_JOB_START_TIME": str(1_790_000_000 + 3600 * restart),  # a requeued job starts anew
        "SLURM_RESTART_COUNT": str(restart),
        "SCONTROL_LOG": str(tmp_path / "scontrol.log"),
    }


def _train(tmp_path: Path, extra: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_"))}
    full = {
        **clean,
        "TOLCLIP_ROOT": str(tmp_path),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "PYTHONPATH": str(tmp_path / "probe"),
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{clean['PATH']}",
        **env,
    }
    cmd = [str(TOLCLIP), "train", *RUN, *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=full, capture_output=True, text=True, timeout=600)


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.heavy
@pytest.mark.slow
def test_requeued_job_resumes_into_the_same_folder_and_ends_with_the_same_weights(tmp_path: Path) -> None:
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "requeue_probe.py").write_text(PROBE)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "scontrol").write_text(SCONTROL)
    (tmp_path / "bin" / "scontrol").chmod(0o755)
    signal_at = [
        "+callbacks.requeue._target_=requeue_probe.SignalAt",
        f"+callbacks.requeue.step={SIGNAL_STEP}",
    ]

    first = _train(tmp_path, signal_at, _slurm_env(tmp_path, restart=0))
    assert first.returncode == 143, first.stderr[-3000:]  # ended by SLURM's SIGTERM after the requeue
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    runs = tmp_path / "logs" / "train" / "runs"
    (folder,) = runs.iterdir()
    assert folder.name.endswith("_j4242")
    hpc = folder / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, map_location="cpu", weights_only=False)["global_step"] == SIGNAL_STEP
    wandb_id = (folder / "wandb_id.txt").read_text()

    # The scheduler starts the same command again: same job id, new start time, new process.
    second = _train(tmp_path, signal_at, _slurm_env(tmp_path, restart=1))
    assert second.returncode == 0, second.stderr[-3000:]
    assert list(runs.iterdir()) == [folder]  # the same run folder, not a new one
    assert f"Restoring states from the checkpoint path at {hpc}" in second.stdout + second.stderr
    final = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert final["global_step"] == 24
    assert (folder / "wandb_id.txt").read_text() == wandb_id
    offline = sorted(p.name for p in (folder / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{wandb_id}") for name in offline)  # one run

    # The same training, never interrupted, outside SLURM (its own folder).
    plain = _train(tmp_path, [], {})
    assert plain.returncode == 0, plain.stderr[-3000:]
    (other,) = set(runs.iterdir()) - {folder}
    reference = _weights(other / "checkpoints" / "last.ckpt")
    resumed = final["state_dict"]
    assert reference.keys() == resumed.keys()
    # Bit for bit: the resumed loader continues the interrupted epoch with the same batches.
    assert [name for name in reference if not torch.equal(resumed[name], reference[name])] == []
