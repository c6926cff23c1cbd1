"""Faults at the `tolclip` command line: one clear line (exit 2) for a user error, every path checked
before the first step, and a run folder of its own for every run, even runs started in one second.

The command-line cases start together (one process each, all under one timeout): on a 2-core machine
their start-up, mostly imports, is what costs time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from tolclip.cli import run_folder
from tolclip.cli.errors import quote_brace_ranges, user_message
from tolclip.data.shards import Sample, write_shards

from helpers import TAXA, make_samples, shard_overrides

TOLCLIP = [sys.executable, "-m", "tolclip"]
TIMEOUT = 240  # all cases together; a hang fails the test instead of stalling the suite


def _cases(root: Path) -> dict[str, list[str]]:
    """name -> the arguments after `tolclip train` (before the common ones, which they override)."""
    text = root / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    truncated = root / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(4096)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:3000])  # the zip directory, at the end, is gone
    empty = root / "empty" / "shard-000000.tar"
    empty.parent.mkdir()
    tarfile.open(empty, "w").close()
    unreadable = [Sample(f"bad{i}", b"not an image", TAXA[0], "test", str(i)) for i in range(4)]
    write_shards(unreadable, root / "unreadable", max_count=4)
    return {
        # A missing shard path, in the README's brace-range form as the shell passes it: it parses now.
        "brace_range": [f"data.train_shards={root}/train/shard-{{000000..000009}}.tar"],
        "bad_override": [f"data.train_shards={root}/x{{a"],
        "batch_size_0": ["data.batch_size=0"],
        "text_ckpt": [f"ckpt_path={text}"],
        "truncated_ckpt": [f"ckpt_path={truncated}"],
        "eval_set_typo": [f"+data.eval_sets.vall={root}/vall/shard-*.tar"],
        "empty_eval_set": [f"+data.eval_sets.empty={empty}"],
        "unreadable_data": [f"data.train_shards={root}/unreadable/shard-*.tar"],
        "debug": ["--debug", "data.batch_size=0"],
    }


def _common(root: Path) -> list[str]:
    return [*shard_overrides(root), "trainer.max_steps=2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("faults")
    write_shards(make_samples(16), root / "train", max_count=4)
    write_shards(make_samples(4, prefix="v"), root / "val", max_count=100)
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0", "TOLCLIP_ROOT": str(root)}
    env.pop("TOLCLIP_RUN_ID", None)
    procs = {}
    for name, args in _cases(root).items():
        debug = args[:1] == ["--debug"]  # --debug must come right after the command
        argv = [*TOLCLIP, "train", *args[:debug], *_common(root), *args[debug:]]
        procs[name] = subprocess.Popen(
            argv, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    done = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=TIMEOUT)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out.decode(), err.decode())
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()  # only on timeout: the assertion below reports it
    return root, done


def _last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


# What the one line must name, per case.
CULPRITS = {
    "brace_range": "data.train_shards: 6 shard(s) not found",
    "bad_override": "data.train_shards",
    "batch_size_0": "batch_size",
    "text_ckpt": "ckpt_path: ",
    "truncated_ckpt": "cut.ckpt",
    "eval_set_typo": "data.eval_sets.vall: no shards match",
    "empty_eval_set": "data.eval_sets.empty: all 1 shard(s) are empty",
    "unreadable_data": "no usable sample in 1 shard(s)",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CULPRITS))
def test_user_error_is_one_line_naming_the_culprit(runs, name: str) -> None:
    root, done = runs
    result = done[name]
    culprit = CULPRITS[name]
    assert result.returncode == 2, result.stderr[-2000:]
    last = _last_line(result.stderr)
    assert last.startswith("tolclip train: error:") and culprit in last, last
    assert "Traceback" not in result.stderr
    if name == "bad_override":
        assert "quotes" in last
    else:  # the error came from inside the run: its traceback is in the run's log, whose path is given
        (where,) = [line for line in result.stderr.splitlines() if "full traceback in" in line]
        log = where.split("full traceback in ")[1].split(" (")[0]
        assert "Traceback" in Path(log).read_text()


@pytest.mark.slow
def test_debug_flag_shows_the_traceback(runs) -> None:
    _, done = runs
    assert done["debug"].returncode != 0 and "Traceback" in done["debug"].stderr


@pytest.mark.slow
def test_paths_are_checked_before_the_first_step_and_every_run_has_its_own_folder(runs) -> None:
    root, done = runs
    folders = sorted((root / "logs" / "train" / "runs").iterdir())
    # Every case but the override that does not parse got as far as a run folder: all distinct,
    # although they started together, each with its own error.
    assert len(folders) == len(done) - 1
    assert sum((f / "error.log").is_file() for f in folders) == len(folders) - 1  # all but --debug's
    assert not list(root.glob("logs/**/*.ckpt"))  # no run trained a step: nothing was checkpointed


def test_same_second_runs_get_different_folders_and_one_job_shares_one() -> None:
    now = 1_790_000_000.0
    alone = {run_folder.make_run_id(env={}, now=now) for _ in range(20)}
    assert len(alone) == 20  # two shells, a sweep's processes, an array without SLURM: all differ
    assert all(name.startswith(run_folder.make_run_id(env={}, now=now)[:19]) for name in alone)  # by time
    task = {"SLURM_JOB_ID": "901", "SLURM_ARRAY_JOB_ID": "900", "SLURM_ARRAY_TASK_ID": "1"}
    ranks = {run_folder.make_run_id(env={**task, "SLURM_PROCID": str(r)}, now=now) for r in range(4)}
    # Every rank of the array task; without the job's start time, no time part (ranks start apart).
    assert ranks == {"j900_1"}
    ranks = {
        run_folder.make_run_id(env={**task, "SLURM_JOB_START_TIME": str(int(now))}, now=now + r)
        for r in range(3)
    }
    assert len(ranks) == 1  # the job's start time: ranks that start a second apart still share it
    other = run_folder.make_run_id(env={**task, "SLURM_JOB_ID": "902", "SLURM_ARRAY_TASK_ID": "2"}, now=now)
    assert other not in ranks
    torchrun = {run_folder.make_run_id(env={"TORCHELASTIC_RUN_ID": "abc"}, now=now) for _ in range(3)}
    assert torchrun == {time_part(now) + "_rabc"}
    assert run_folder.make_run_id(env={"TOLCLIP_RUN_ID": "my run/1"}, now=now) == "my-run-1"


def time_part(now: float) -> str:
    import time

    return time.strftime(run_folder.DEFAULT_FORMAT, time.localtime(now))


def test_resolver_is_stable_within_a_run_and_fresh_for_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_JOB_ID", "TORCHELASTIC_RUN_ID", "TOLCLIP_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    cfg = OmegaConf.create({"run": "${run_id:%Y-%m-%d_%H-%M-%S}", "again": "${run_id:%Y-%m-%d_%H-%M-%S}"})
    run_folder.fresh()
    first = cfg.run
    assert cfg.again == first  # Hydra and Lightning's DDP launch resolve it more than once
    run_folder.fresh()
    assert OmegaConf.create({"run": "${run_id:%Y-%m-%d_%H-%M-%S}"}).run != first


def test_readme_brace_range_is_quoted_and_other_values_are_left_alone() -> None:
    args = ["data.train_shards=/d/shard-{000000..000159}.tar", "data.eval_sets={rare: /r/*.tar}", "x=1"]
    assert quote_brace_ranges(args) == ["data.train_shards='/d/shard-{000000..000159}.tar'", *args[1:]]
    assert quote_brace_ranges(["k='/d/{0..1}.tar'"]) == ["k='/d/{0..1}.tar'"]  # already quoted


def test_error_inside_a_config_target_is_reported_by_its_cause() -> None:
    wrapped = InstantiationException("Error in call to target 'X':\nValueError('bad')\nfull_key: data")
    wrapped.__cause__ = ValueError("data.batch_size must be positive")
    assert user_message(wrapped) == "data.batch_size must be positive"
    assert user_message(RuntimeError("a bug")) is None  # keeps its traceback
    assert user_message(KeyError("no eval set 'x'")) == "no eval set 'x'"


@pytest.mark.slow
def test_sigterm_ends_a_run_waiting_on_a_shard_that_never_delivers(tmp_path: Path) -> None:
    """SLURM sends SIGTERM before SIGKILL: a run blocked reading a silent `pipe:` shard must stop, and
    pass the signal on to the shard's command (`exec` makes the shell the command itself)."""
    env = {**os.environ, "WANDB_MODE": "offline", "TOLCLIP_ROOT": str(tmp_path)}
    argv = [
        *TOLCLIP,
        "train",
        "data=shards",
        "data.train_shards=pipe:exec sleep 300",
        "data.epoch_samples=16",
        "data.batch_size=8",
        "data.num_workers=0",
        "model=micro",
        "logger=csv",
        "trainer.max_steps=2",
        "~callbacks.progress_bar",
    ]
    # Files, not pipes: output pipes would stay open in any child that outlived the run.
    with (tmp_path / "out.log").open("w") as out, (tmp_path / "err.log").open("w") as err:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=out, stderr=err)
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:  # until fit is starting
            if list((tmp_path / "logs" / "train" / "runs").glob("*/csv")):
                break
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "err.log").read_text()[-2000:]
        time.sleep(5)  # now waiting inside the loader for the pipe's first bytes
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = (tmp_path / "err.log").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert _last_line(stderr).startswith("tolclip train: stopped by SIGTERM")
    time.sleep(1)
    left = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    assert "sleep 300" not in left  # the shard's command got the signal too, and is gone
