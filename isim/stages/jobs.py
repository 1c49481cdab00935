"""Running a stage as a child ``train.py`` job, and the process rules of DDP runs.

Two things need a fresh single-run Hydra job in a given directory: ``stage=iterate`` (each step is
its own job) and a sweep job that trains with Lightning's DDP launcher, which re-executes
``sys.argv`` for every extra rank: inside a multirun that would re-launch the whole sweep, so the
job first re-runs itself as a plain run in its own directory, where the re-execution is harmless.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig


def run_child_job(cfg: DictConfig, run_dir: Path, overrides: Iterable[str], drop: Iterable[str] = ()) -> int:
    """Run ``train.py`` with this job's command-line overrides (minus the keys in ``drop``) plus ``overrides``,
    as a single run in ``run_dir``; returns its exit code. Output goes to this job's terminal."""
    command = [
        sys.executable,
        str(Path(sys.argv[0]).resolve()),
        *forwarded_overrides(set(drop)),
        *overrides,
        f"hydra.run.dir={run_dir}",
    ]
    return subprocess.run(command, cwd=cfg.paths.root_dir).returncode


def launch_job(cfg: DictConfig, run_dir: Path, overrides: Iterable[str], drop: Iterable[str] = ()) -> int:
    """Like ``run_child_job``, but through this job's configured Hydra launcher (``hydra/launcher``): a one-job
    multirun whose job directory is ``run_dir``, so with ``hydra/launcher=slurm`` the step is its own SLURM job
    with its own GPUs, and this process only waits for it. The basic launcher runs it as a plain child run."""
    launcher = configured_launcher()
    if launcher == "basic":
        return run_child_job(cfg, run_dir, overrides, drop)
    command = [
        sys.executable,
        str(Path(sys.argv[0]).resolve()),
        "--multirun",
        *forwarded_overrides(set(drop)),
        *forwarded_hydra_overrides(),
        *overrides,
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={run_dir.parent}",
        f"hydra.sweep.subdir={run_dir.name}",
        "~hydra.callbacks.sweep_summary",  # a one-job sweep: its table would only repeat the step's summary
    ]
    return subprocess.run(command, cwd=cfg.paths.root_dir).returncode


def configured_launcher() -> str:
    if not HydraConfig.initialized():
        return "basic"
    return HydraConfig.get().runtime.choices.get("hydra/launcher") or "basic"


def forwarded_hydra_overrides() -> list[str]:
    """This job's ``hydra...`` overrides (the launcher's partition, account, ...), but not where it runs."""
    own = ("hydra/launcher", "hydra.run.", "hydra.sweep.", "hydra.mode", "hydra.job.")
    return [item for item in HydraConfig.get().overrides.hydra if not item.lstrip("+~").startswith(own)]


def forwarded_overrides(drop: set[str]) -> list[str]:
    """This job's command-line overrides (a sweep job's own values included), without the keys in ``drop``."""
    if not HydraConfig.initialized():
        return []
    return [item for item in HydraConfig.get().overrides.task if item.split("=", 1)[0].lstrip("+~") not in drop]


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def needs_own_process(cfg: DictConfig) -> bool:
    """A sweep job whose Trainer would start extra ranks by re-executing the command line."""
    if cfg.stage.name == "iterate":
        return False  # it trains nothing itself; its steps already run as single-run child jobs
    if not in_multirun() or SLURMEnvironment.detect() or TorchElasticEnvironment.detect():
        return False  # SLURM (submitit) and torchrun start the ranks themselves
    strategy = cfg.trainer.get("strategy") or ""
    name = strategy if isinstance(strategy, str) else strategy.get("_target_", "")
    return "ddp" in name.lower() and "spawn" not in name.lower()


def quiet_secondary_ranks() -> None:
    """Ranks > 0 of a node share rank 0's run dir: only rank 0 keeps a log file and logs below warnings."""
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
            Path(handler.baseFilename).unlink(missing_ok=True)
        else:
            handler.setLevel(logging.WARNING)
