"""Launching on a cluster: the sbatch examples compose as tolclip configs and ask SLURM for what
the configs expect; `hydra/launcher=slurm` gives hydra-submitit-launcher the same settings."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tolclip.cli import run_folder  # noqa: F401 - registers ${run_id:} (the launcher's folder uses it)
from tolclip.cli.errors import quote_brace_ranges

from helpers import REPO, make_cfg

SCRIPTS = sorted((REPO / "scripts" / "slurm").glob("*.sbatch"))
ENV = {"INIT_FROM": "/models/openai-vit-b-16", "TRAIN_SHARDS": "/data/tol/shard-{000000..000159}.tar"}


def _sbatch_options(text: str) -> dict[str, str]:
    return dict(
        (m.group(1), m.group(2) or "") for m in re.finditer(r"^#SBATCH --([\w-]+)(?:=(\S+))?", text, re.M)
    )


def _srun_args(text: str) -> list[str]:
    """The tolclip arguments of the srun line, as the shell would pass them (continuations joined)."""
    joined = text.replace("\\\n", " ")
    (line,) = [ln for ln in joined.splitlines() if ln.strip().startswith("srun ")]
    for name, value in ENV.items():
        line = line.replace(f"${{{name}}}", value)
    words = shlex.split(line)
    assert words[:3] == ["srun", "tolclip", "train"], words
    return quote_brace_ranges(words[3:])  # what `tolclip train` does with them


def test_there_are_examples_for_one_node_and_four() -> None:
    nodes = sorted(int(_sbatch_options(p.read_text())["nodes"]) for p in SCRIPTS)
    assert nodes == [1, 4]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_sbatch_example_composes_and_matches_its_allocation(script: Path, tmp_path: Path) -> None:
    text = script.read_text()
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid shell
    opts = _sbatch_options(text)
    cfg = make_cfg(tmp_path, _srun_args(text))
    assert cfg.task_name == "bioclip" and cfg.model.init_from == ENV["INIT_FROM"]
    assert cfg.data.train_shards == ENV["TRAIN_SHARDS"]
    assert cfg.trainer.strategy == "ddp" and cfg.ckpt_path == "auto"  # a requeued job resumes
    # One SLURM task per GPU, every node: what Lightning's SLURM environment checks.
    assert int(opts["nodes"]) == cfg.trainer.num_nodes
    assert int(opts["ntasks-per-node"]) == int(opts["gpus-per-node"]) == cfg.trainer.devices
    # The paper's contrastive batch, on either allocation.
    assert cfg.data.batch_size * cfg.trainer.devices * cfg.trainer.num_nodes == 32768
    # Lightning's requeue signal (SLURMEnvironment's default SIGUSR1), early enough to save.
    signal, _, seconds = opts["signal"].partition("@")
    assert signal in ("SIGUSR1", "USR1") and int(seconds) >= 60
    assert "requeue" in opts


def test_slurm_launcher_config_gives_submitit_one_task_per_gpu_and_lightnings_signal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitit = pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra.utils import instantiate
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    overrides = ["hydra/launcher=slurm", "hydra.launcher.nodes=4", "trainer=ddp", "trainer.num_nodes=4"]
    cfg = make_cfg(tmp_path, overrides)
    launcher = instantiate(cfg.hydra.launcher)
    params = launcher.params
    assert type(launcher).__name__ == "SlurmLauncher"
    assert params["nodes"] == 4 and params["gpus_per_node"] == params["tasks_per_node"] == 8
    assert params["timeout_min"] > 60 and params["max_num_timeout"] > 0
    # The sbatch file submitit would write, built as the launcher builds its executor (srun: faked).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "sub"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        **{
            k if k in base else f"slurm_{k}": v
            for k, v in params.items()
            if k not in ("submitit_folder", "max_num_timeout")
        }
    )
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit X", "uid")
    opts = _sbatch_options(sbatch)
    assert opts["nodes"] == "4" and opts["ntasks-per-node"] == "8" and opts["gpus-per-node"] == "8"
    assert opts["signal"] == f"USR1@{params['signal_delay_s']}"  # Lightning's, not submitit's USR2
    assert "requeue" in opts
