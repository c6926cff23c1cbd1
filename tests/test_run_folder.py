"""One run folder per job: shared by ranks launched separately, kept when SLURM requeues the job.

(Names without a launcher, and the per-process cache: tests/test_faults_cli.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tolclip.cli import run_folder

from helpers import CONFIG_DIR, free_port

TORCHRUN = Path(sys.executable).with_name("torchrun")
NOW = 1_790_000_000.0
JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_START_TIME": str(int(NOW))}

# Prints the run folder the real hydra.run.dir interpolation resolves to in this process.
# argv: config dir, seconds to wait first (rank 0 only, under torchrun), log dir.
RESOLVE = """
import os, sys, time, yaml
from omegaconf import OmegaConf
from tolclip.cli import run_folder
if os.environ.get("RANK", "0") == "0":
    time.sleep(float(sys.argv[2]))
hydra = yaml.safe_load(open(sys.argv[1] + "/hydra/default.yaml"))
cfg = OmegaConf.create({"paths": {"log_dir": sys.argv[3]}, "task_name": "train", "run": hydra["run"]})
# One write per line: the ranks share the pipe unbuffered, and print's separate pieces interleaved.
sys.stdout.write(f"RUN_DIR {cfg.run.dir}\\n")
sys.stdout.flush()
"""


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC_", "TOLCLIP_RUN"))
    }
    return {**env, **extra}


def _run_dirs(output: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("RUN_DIR ")]


def test_a_requeued_slurm_job_finds_its_folder_again(tmp_path: Path) -> None:
    first = run_folder.make_run_id(env={**JOB, "SLURM_RESTART_COUNT": "0"}, parent=str(tmp_path))
    assert first.endswith("_j4242")
    (tmp_path / first).mkdir()
    (tmp_path / (first[:-4] + "42")).mkdir()  # job 42's folder: another job, never taken for 4242
    # Requeued: SLURM gives the job a new start time but keeps its id, and counts the restart.
    later = {**JOB, "SLURM_JOB_START_TIME": str(int(NOW) + 7200), "SLURM_RESTART_COUNT": "1"}
    assert run_folder.make_run_id(env=later, parent=str(tmp_path)) == first
    # A first start never reuses a folder (a job id the cluster hands out again, years later).
    assert run_folder.make_run_id(env={**later, "SLURM_RESTART_COUNT": "0"}, parent=str(tmp_path)) != first
    # A requeue whose first start never got as far as a folder: named as a first start would be.
    assert run_folder.make_run_id(env=later, parent=str(tmp_path / "none")).endswith("_j4242")


def test_slurm_ranks_started_apart_share_one_folder_through_the_real_config(tmp_path: Path) -> None:
    """Two tasks of one job, separate processes started a second apart, resolve `hydra.run.dir`."""
    env = _clean_env(**JOB, SLURM_RESTART_COUNT="0")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RESOLVE, CONFIG_DIR, str(delay), str(tmp_path)],
            env={**env, "SLURM_PROCID": str(rank)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank, delay in enumerate((0.0, 1.2))
    ]
    dirs = [d for p in procs for d in _run_dirs(p.communicate(timeout=120)[0])]
    assert len(dirs) == 2 and dirs[0] == dirs[1] and dirs[0].startswith(f"{tmp_path}/train/runs/")
    assert dirs[0].endswith("_j4242")
    # Without SLURM's start time a time part could differ between the tasks: the name is the job alone.
    assert run_folder.make_run_id(env={"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}) == "j4242s0"


def _torchrun(tmp_path: Path, *args: str) -> list[str]:
    script = tmp_path / "resolve.py"
    script.write_text(RESOLVE)
    # Rank 0 starts resolving 1.5 s after rank 1: rank 1 must wait for rank 0's name.
    done = subprocess.run(
        [str(TORCHRUN), *args, "--nproc-per-node", "2", str(script), CONFIG_DIR, "1.5", str(tmp_path)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return _run_dirs(done.stdout)


@pytest.mark.slow
def test_torchrun_ranks_without_a_rendezvous_id_share_rank0s_folder(tmp_path: Path) -> None:
    """The multi-node form (static rendezvous, no --rdzv-id): TORCHELASTIC_RUN_ID is "none", so
    rank 0 draws the name and the other ranks read it from the elastic agent's store."""
    port = str(free_port())
    dirs = _torchrun(
        tmp_path, "--nnodes", "1", "--node-rank", "0", "--master-addr", "127.0.0.1", "--master-port", port
    )
    assert len(dirs) == 2 and dirs[0] == dirs[1], dirs
    assert "none" not in Path(dirs[0]).name


@pytest.mark.heavy
@pytest.mark.slow
def test_torchrun_ranks_with_a_rendezvous_id_started_seconds_apart_share_one_folder(tmp_path: Path) -> None:
    """The single-node form: torchrun draws a rendezvous id itself, which names the run; the time
    part is rank 0's, although rank 0 resolves it more than a second after rank 1."""
    plain = _torchrun(tmp_path)
    assert len(plain) == 2 and plain[0] == plain[1], plain
    assert "_r" in Path(plain[0]).name


def test_a_rank_whose_rank0_never_answers_stops_with_a_clear_error() -> None:
    from torch.distributed import TCPStore

    port = free_port()
    store = TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)  # the agent's store
    env = {
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RUN_ID": "none",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="rank 1 got no run name from rank 0 .* within 1s.*--rdzv-id"):
        run_folder.make_run_id(env={**env, "RANK": "1"}, timeout_s=1)
    assert time.monotonic() - start < 10  # bounded
    name = run_folder.make_run_id(env={**env, "RANK": "0"}, timeout_s=5)
    assert run_folder.make_run_id(env={**env, "RANK": "1"}, timeout_s=5) == name
    # A rendezvous id without a store: that id alone, which every rank has (no time part to disagree on).
    alone = {"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "2"}
    assert {run_folder.make_run_id(env={**alone, "RANK": r}) for r in "01"} == {"rabc"}
    del store


def test_a_sweep_pickled_to_cluster_jobs_keeps_its_launchers_folder(tmp_path: Path) -> None:
    """hydra-submitit-launcher resolves the sweep folder, pickles the config and runs each job in a
    new process (on another node): the name travels in the config's resolver cache, as `${now:}`'s."""
    import pickle

    from helpers import make_cfg

    cfg = make_cfg(tmp_path, ["hydra/launcher=slurm"])
    folder = str(cfg.hydra.sweep.dir)
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    job = (
        "import pickle, sys\n"
        "from hydra.core.hydra_config import HydraConfig\n"
        "from tolclip.cli import run_folder\n"
        "cfg = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "HydraConfig().set_config(cfg)\n"
        "print('RUN_DIR', cfg.hydra.sweep.dir)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", job, str(tmp_path / "cfg.pkl")],
        env=_clean_env(SLURM_JOB_ID="77", SLURM_ARRAY_JOB_ID="76", SLURM_ARRAY_TASK_ID="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _run_dirs(done.stdout) == [folder]
