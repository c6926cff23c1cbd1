"""One `tolclip` command: every subcommand answers --help, and an installed wheel (not this source
tree) finds its own configs and trains from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tolclip.cli.main import COMMANDS, main

from helpers import REPO, SYNTHETIC_MICRO

TOLCLIP = Path(sys.executable).with_name("tolclip")
# A few steps of the micro model on a very small synthetic tree of life, evaluated with one template.
TINY_RUN = [*SYNTHETIC_MICRO, "logger=csv", "trainer.max_epochs=1"]


def run(cmd: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", **env}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in COMMANDS)
    assert main(["no-such-command"]) == 2
    assert "unknown command 'no-such-command'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_has_help(name: str, tmp_path: Path) -> None:
    done = run([str(TOLCLIP), name, "--help"], cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout.lower()
    assert f"tolclip {name}" in text  # says which command it is, and what it does
    assert len(text.splitlines()) >= 3


def _install_wheel(tmp_path: Path) -> Path:
    """Build the wheel from a copy of the project and unpack it into a folder of its own."""
    project = tmp_path / "project"
    for part in ("src", "configs"):
        shutil.copytree(
            REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / part, project / part)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    done = run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(project)],
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("tolclip-*.whl")
    target = tmp_path / "installed"
    done = run(
        [*pip, "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)], cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return target


@pytest.mark.slow
def test_installed_wheel_trains_from_another_directory(tmp_path: Path) -> None:
    target = _install_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {"PYTHONPATH": str(target)}  # the installed copy, ahead of the editable checkout
    where = run(
        [
            sys.executable,
            "-c",
            "import tolclip, tolclip.core.resources as r; print(tolclip.__file__); print(r.config_dir())",
        ],
        cwd=work,
        **env,
    )
    package, configs = where.stdout.split()
    assert package.startswith(str(target)) and configs.startswith(str(target))
    assert (Path(configs) / "train.yaml").is_file() and (
        Path(configs) / "model" / "net" / "tiny.yaml"
    ).is_file()

    tolclip = [sys.executable, str(target / "bin" / "tolclip")]
    assert "train" in run([*tolclip, "--help"], cwd=work, **env).stdout
    user = tmp_path / "my-configs" / "experiment"  # a user's own config dir composes on top
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text("# @package _global_\ntask_name: mine\ntags: [from_my_configs]\n")
    (user.parent / "local").mkdir()  # machine-local settings, applied without being named
    (user.parent / "local" / "default.yaml").write_text("# @package _global_\nseed: 7\n")
    done = run(
        [
            *tolclip,
            "train",
            "--config-dir",
            str(user.parent),
            "experiment=mine",
            *TINY_RUN,
            "trainer.max_steps=5",
        ],
        cwd=work,
        timeout=600,
        **env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "zero-shot accuracy" in done.stdout and "species" in done.stdout
    (run_dir,) = (work / "logs" / "mine" / "runs").iterdir()  # outputs under the working directory
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "zero_shot.csv").is_file()
    saved = (run_dir / ".hydra" / "config.yaml").read_text()
    assert "from_my_configs" in saved and "\nseed: 7\n" in saved
    assert (work / "data" / "synthetic" / "manifest.json").is_file()


@pytest.mark.heavy
@pytest.mark.slow
def test_ddp_ranks_relaunched_by_lightning_share_one_run_folder(tmp_path: Path) -> None:
    """Lightning starts rank 1 from sys.argv: `tolclip train` must come back as itself, subcommand included."""
    done = run(
        [
            str(TOLCLIP),
            "train",
            *TINY_RUN,
            "trainer.max_steps=3",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "+trainer.strategy=ddp",
        ],
        cwd=tmp_path,
        timeout=400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in done.stdout + done.stderr
    (run_dir,) = (tmp_path / "logs" / "train" / "runs").iterdir()
    assert (run_dir / "train_ddp_process_1.log").is_file() and (
        run_dir / "checkpoints" / "last.ckpt"
    ).is_file()
