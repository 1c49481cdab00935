"""A Hydra callback that tabulates a multirun: one row per job with its overrides and key figures; the
objective of an hparams search.

The table, ``<sweep dir>/sweep_summary.csv``, is rewritten after every job (so a sweep that ends in
a failed job still has it, and launchers that run jobs elsewhere, like submitit, still fill it from
the job directories) and once more at the end. A job without a summary.json is listed as failed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from isim.errors import IsimError
from isim.io import write_csv

log = logging.getLogger(__name__)

# Figures of each stage's summary.json worth comparing across jobs, by their dotted path.
FIGURES = ("cam.best_miou", "cam.best_threshold", "labels.miou", "val.miou", "label_miou_gain", "timings.total_s")


class SweepSummary(Callback):
    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode == RunMode.MULTIRUN:
            write_sweep_summary(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = write_sweep_summary(Path(config.hydra.sweep.dir))
        if path is not None:
            log.info("sweep summary: %s\n%s", path, path.read_text())


def write_sweep_summary(sweep_dir: Path) -> Path | None:
    rows = [job_row(job_dir) for job_dir in sorted(sweep_dir.glob("*/.hydra"), key=_job_number)]
    if not rows:
        return None
    if len(rows) > 1:  # show what the jobs differ in, not the overrides they share
        shared = set.intersection(*(set(row["overrides"]) for row in rows))
        for row in rows:
            row["overrides"] = [item for item in row["overrides"] if item not in shared]
    for row in rows:
        row["overrides"] = " ".join(row["overrides"])
    path = sweep_dir / "sweep_summary.csv"
    write_csv(path, list(dict.fromkeys(key for row in rows for key in row)), rows)
    return path


def job_row(hydra_dir: Path) -> dict[str, Any]:
    """A job's number, overrides (a list), status and the key figures of its summary.json."""
    job_dir = hydra_dir.parent
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
    row: dict[str, Any] = {"job": job_dir.name, "overrides": overrides}
    summary_path = job_dir / "summary.json"
    if not summary_path.is_file():
        return {**row, "status": "failed"}
    summary = json.loads(summary_path.read_text())
    row.update(status="completed", stage=summary.get("stage"))
    if summary.get("rounds"):
        last = summary["rounds"][-1]
        row.update(rounds=last["round"], final_label_miou=last["label_miou"], final_val_miou=last["val_miou"])
    for path in FIGURES:
        value = _dig(summary, path)
        if value is not None:
            row[path] = value
    return row


def objective(summary: dict[str, Any], metric: str) -> float:
    """The figure an hparams search optimises: ``metric`` is a dotted path into the job's summary.json
    (list items by index: ``rounds.-1.val_miou`` is the last ISIM round's val mIoU)."""
    value = _dig(summary, metric)
    if not isinstance(value, (int, float)):
        raise IsimError(
            f"optimized_metric={metric} is not a number in the {summary.get('stage')} stage's "
            f"summary.json; name one, e.g. {', '.join(FIGURES[:4])}"
        )
    return float(value)


def _dig(data: Any, dotted: str) -> Any:
    for key in dotted.split("."):
        if isinstance(data, list) and key.lstrip("-").isdigit() and -len(data) <= int(key) < len(data):
            data = data[int(key)]
        elif isinstance(data, dict):
            data = data.get(key)
        else:
            return None
    return data if isinstance(data, (int, float, str)) else None


def _job_number(hydra_dir: Path) -> tuple[int, str]:
    name = hydra_dir.parent.name
    return (int(name), name) if name.isdigit() else (1 << 30, name)
