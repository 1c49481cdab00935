"""Loggers that survive a resume: the CSV history is continued, not deleted, and a W&B run is continued by id."""

from __future__ import annotations

import csv
import uuid
from pathlib import Path

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

from isim.io import atomic_path


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, except that a new process in the same run dir (a resumed run) appends to
    ``metrics.csv`` instead of deleting the history before the crash."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return self._experiment


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():  # the history so far: keep it, and its columns, which later rows must match
            with open(path, newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of ``run_dir``: made on its first run, read back on every later one, so a resumed step
    continues its run (``resume="allow"``) instead of adding a second one to the group."""
    path = Path(run_dir) / ".wandb_run_id"
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.write_text(uuid.uuid4().hex[:12])
    return path.read_text().strip()
