"""Crash-safe, strict writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from isim.io import write_json, write_png
from isim.modules.checkpoint import DurableCheckpointIO
from isim.stages.common import build_trainer
from tests.conftest import compose_config, refuse_non_json


def test_summaries_are_strict_json_with_null_for_non_finite_values(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"per_class_iou": {"cat": float("nan"), "dog": 0.5}, "rates": (float("inf"), -float("inf"), 2)})
    assert json.loads(path.read_text(), parse_constant=refuse_non_json) == {
        "per_class_iou": {"cat": None, "dog": 0.5},
        "rates": [None, None, 2],
    }
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_files_get_the_permissions_of_the_umask(tmp_path: Path) -> None:
    """A store or summary shared on a cluster's filesystem must be readable by the group, as any new file is."""
    previous = os.umask(0o022)
    try:
        write_json(tmp_path / "summary.json", {"a": 1})
        write_png(tmp_path / "label.png", np.zeros((4, 4), np.uint8))
        DurableCheckpointIO().save_checkpoint({"weights": torch.ones(3)}, tmp_path / "last.ckpt")
    finally:
        os.umask(previous)
    names = ("summary.json", "label.png", "last.ckpt")
    assert {stat.S_IMODE((tmp_path / name).stat().st_mode) for name in names} == {0o644}
    assert torch.load(tmp_path / "last.ckpt")["weights"].tolist() == [1, 1, 1] and not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_trainers_write_checkpoints_through_the_durable_writer(trainer: str, tmp_path: Path) -> None:
    cfg = compose_config(f"trainer={trainer}", "logger=none", "callbacks=none", output_dir=tmp_path)
    assert isinstance(build_trainer(cfg, max_epochs=1).strategy.checkpoint_io, DurableCheckpointIO)
