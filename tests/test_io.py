"""Crash-safe, strict writes."""

from __future__ import annotations

import json
from pathlib import Path

from isim.io import write_json
from tests.conftest import refuse_non_json


def test_summaries_are_strict_json_with_null_for_non_finite_values(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json(path, {"per_class_iou": {"cat": float("nan"), "dog": 0.5}, "rates": (float("inf"), -float("inf"), 2)})
    assert json.loads(path.read_text(), parse_constant=refuse_non_json) == {
        "per_class_iou": {"cat": None, "dog": 0.5},
        "rates": [None, None, 2],
    }
    assert not list(tmp_path.glob(".*.tmp"))
