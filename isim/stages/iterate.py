"""``stage=iterate``: ISIM end to end. The cam and labels stages, then rounds 1..N, each its own Hydra job
(``train.py stage=round round=k``, so each has its config snapshot, log, W&B run and directory). A stage or
round whose summary.json exists is done and is skipped, so a re-run continues after the last completed one."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import WandbLogger

from isim.errors import IsimError
from isim.io import write_csv, write_json
from isim.stages.common import build_logger, uses_gt
from isim.stages.fingerprint import changed_keys, determining
from isim.stages.jobs import in_multirun, launch_job
from isim.stages.labels import foreground_share
from isim.visualize import rounds_plot

log = logging.getLogger(__name__)

COLUMNS = ["round", "label_miou", "val_miou", "changed_fraction", "wall_s"]
# Set per child job by this stage, never forwarded from its own command line.
OWN_KEYS = ("stage", "round", "ckpt_path", "paths.experiment_dir", "hydra.run.dir")


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    experiment_dir = _experiment_dir(cfg)
    if sized(cfg):
        foreground_share(cfg)  # checked before the CAM stage trains, not after it
    _ensure_done(cfg, experiment_dir, "cam", "stage=cam")
    rows = [_row(0, _ensure_done(cfg, experiment_dir, "labels", "stage=labels"))]
    for k in range(1, cfg.iterate.rounds + 1):
        summary = _ensure_done(cfg, experiment_dir, f"round-{k}", "stage=round", f"round={k}")
        rows.append(_row(k, summary))
        if summary["labels"].get("changed_fraction", 1.0) < cfg.iterate.min_change:
            log.info("round %d changed %.4f of the label pixels < iterate.min_change: stopping", k, rows[-1][3])
            break
    summary = {
        "stage": "iterate",
        "name": cfg.name,
        "uses_gt": uses_gt(cfg),
        "experiment_dir": str(experiment_dir),
        "rounds": [dict(zip(COLUMNS, row, strict=True)) for row in rows],
        "label_miou_gain": _gain(rows[0][1], rows[-1][1]),
        "timings": {"total_s": round(time.perf_counter() - start, 2)},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    write_csv(output_dir / "rounds.csv", COLUMNS, summary["rounds"])
    rounds_plot(
        [row[0] for row in rows],
        {"pseudo-labels (train)": [row[1] for row in rows], "segmenter (val)": [row[2] for row in rows]},
        output_dir / "rounds.png",
        f"ISIM rounds of {cfg.name}",
    )
    write_json(output_dir / "summary.json", summary)
    _log_rounds(cfg, rows, output_dir / "rounds.png")
    print(f"\nISIM rounds of {cfg.name} ({experiment_dir}):\n{round_table(rows)}", flush=True)
    return summary


def sized(cfg: DictConfig) -> bool:
    """Whether a step sizes its labels to labels.foreground_share: round 0, or the rounds through the mode their
    label source reads (cam: iterate.threshold; seg, cam+seg: iterate.logit_adjustment)."""
    it = cfg.iterate
    return "share" in (cfg.labels.threshold, it.threshold if it.label_source == "cam" else it.logit_adjustment)


def round_table(rows: list[list]) -> str:
    """The rounds as an aligned text table (missing figures as -)."""
    cells = [COLUMNS] + [[_cell(value) for value in row[:-1]] + [f"{row[-1]:.0f}"] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells)


def _experiment_dir(cfg: DictConfig) -> Path:
    """runs/<name> for a single run; inside a sweep, the job's own directory, so sweep jobs never share stages."""
    if in_multirun():
        return Path(cfg.paths.output_dir)
    return Path(cfg.paths.experiment_dir)


def _ensure_done(cfg: DictConfig, experiment_dir: Path, step: str, *overrides: str) -> dict[str, Any]:
    """The step's summary, running its job first unless it has completed with the keys that determine it as they
    are now (``fingerprint``); a step done with other values is refused, or with ``iterate.rerun=changed`` moved
    aside with every later step and run again."""
    summary_path = experiment_dir / step / "summary.json"
    if summary_path.is_file():
        kind = "round" if step.startswith("round-") else step
        recorded = json.loads(summary_path.read_text()).get("determined_by")
        changed = changed_keys(recorded, determining(cfg, kind))
        if changed and cfg.iterate.rerun != "changed":
            shown = ", ".join(f"{key}: {(recorded or {}).get(key)!r} -> {_value(cfg, key)!r}" for key in changed[:4])
            more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            raise IsimError(
                f"{step} in {experiment_dir} was made with other settings ({shown}{more}); re-run from it with "
                "iterate.rerun=changed (its outputs and later steps' move to <dir>.stale-<time>), or name=<new name>"
            )
        if changed:
            _move_aside(experiment_dir, step)
    if summary_path.is_file():
        log.info("%s is done (%s); skipping it", step, summary_path)
    else:
        log.info("running %s", " ".join(overrides))
        overrides = (*overrides, f"paths.experiment_dir={experiment_dir}")
        code = launch_job(cfg, experiment_dir / step, overrides, drop=OWN_KEYS)
        if code != 0 or not summary_path.is_file():
            raise IsimError(
                f"{step} failed (exit code {code}; log in {experiment_dir / step}). Completed steps "
                "are kept: fix the cause and re-run stage=iterate to continue from this step"
            )
    return json.loads(summary_path.read_text())


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def _move_aside(experiment_dir: Path, step: str) -> None:
    """``step`` and the steps after it (which were made from its outputs) go to ``<dir>.stale-<time>``."""
    rounds = sorted(int(p.name[6:]) for p in experiment_dir.glob("round-*") if p.name[6:].isdigit())
    order = ["cam", "labels", *(f"round-{k}" for k in rounds)]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in order[order.index(step) :]:
        if (experiment_dir / name).exists():
            (experiment_dir / name).rename(experiment_dir / f"{name}.stale-{stamp}")
            log.warning("%s was made with other settings: moved to %s.stale-%s", name, name, stamp)


def _row(k: int, summary: dict[str, Any]) -> list:
    labels = summary.get("labels", {})
    return [
        k,
        labels.get("miou"),
        summary.get("val", {}).get("miou"),
        labels.get("changed_fraction"),
        summary["timings"]["total_s"],
    ]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _gain(first: float | None, last: float | None) -> float | None:
    return None if first is None or last is None else last - first


def _log_rounds(cfg: DictConfig, rows: list[list], plot: Path) -> None:
    """The round figures as metrics (step = round) and, on W&B, the round table and plot in this experiment's
    group."""
    if not cfg.get("logger"):
        return
    logger = build_logger(cfg)
    for row in rows:
        metrics = {f"rounds/{key}": value for key, value in zip(COLUMNS[1:], row[1:], strict=True) if value is not None}
        logger.log_metrics(metrics, step=row[0])
    if isinstance(logger, WandbLogger):
        logger.log_table("rounds/table", columns=COLUMNS, data=rows)
        logger.log_image("rounds/plot", images=[str(plot)])
        logger.experiment.finish()
    else:
        logger.save()
