"""How far does one round's label mIoU move with the seed alone? The noise a round-to-round change is judged by.

    python benchmarks/round_noise.py --workdir W --rows synthetic-lite0-seg,synthetic-scratch-cam_seg
                                     [--round 3] [--seeds 1,2] [override ...]

Each row is a finished ``benchmarks/rounds_table.py`` row in workdir W (its run directory ``W/runs/<row>``). Its
round ``--round`` is run again, as ``python train.py stage=round``, once per seed, from a copy of the row's
earlier steps (cam/, labels/, rounds before it): the same labels to train on, the same warm start, another draw of
shuffles and augmentations. Prints a markdown table: the row's round k-1 and round k, each seed's round k, and the
spread of round k's label and val mIoU over all its seeds (the row's own included). Re-running reprints finished
seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rounds_table import INITS, ROOT, cell


def rerun_round(workdir: Path, row: str, k: int, seed: int, overrides: list[str]) -> Path:
    """Round k of ``row`` again with ``seed``, in ``W/runs/noise-<row>-s<seed>``; that round's directory."""
    source_dir = workdir / "runs" / row
    config = json.loads((source_dir / f"round-{k}/summary.json").read_text())["config"]
    name = f"noise-{row}-s{seed}"
    experiment = workdir / "runs" / name
    for step in ("cam", "labels", *(f"round-{j}" for j in range(1, k))):
        if not (experiment / step).is_dir():
            shutil.copytree(source_dir / step, experiment / step)
    if not (experiment / f"round-{k}/summary.json").is_file():
        init = "lite0" if config["model"]["backbone"] == "tf_efficientnet_lite0" else "scratch"
        it = config["iterate"]
        command = [
            sys.executable,
            str(ROOT / "train.py"),
            "stage=round",
            f"round={k}",
            f"name={name}",
            f"seed={seed}",
            f"data={config['data']['name']}",
            f"iterate.label_source={it['label_source']}",
            f"iterate.rounds={it['rounds']}",
            f"iterate.epochs_per_round={it['epochs_per_round']}",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            *INITS[init],
            *overrides,
        ]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_SILENT": "true"}
        with open(experiment.parent / f"{name}.log", "a") as log:
            if subprocess.run(command, cwd=workdir, env=env, stdout=log, stderr=log).returncode != 0:
                raise SystemExit(f"{name} failed; see {log.name}")
    return experiment / f"round-{k}"


def mious(round_dir: Path) -> tuple[float, float | None]:
    """A round's label mIoU and its segmenter's val mIoU (None for round 0)."""
    summary = json.loads((round_dir / "summary.json").read_text())
    assert not summary["uses_gt"], f"{round_dir}: a GT-informed choice"
    return summary["labels"]["miou"], (summary.get("val") or {}).get("miou")


def table_row(workdir: Path, row: str, k: int, seeds: list[int], overrides: list[str]) -> str:
    runs = workdir / "runs" / row
    before, _ = mious(runs / ("labels" if k == 1 else f"round-{k - 1}"))
    measured = [mious(runs / f"round-{k}")] + [mious(rerun_round(workdir, row, k, s, overrides)) for s in seeds]
    labels = [label for label, _ in measured]
    vals = [val for _, val in measured if val is not None]
    return (
        f"| {row} | {cell(before)} | {' / '.join(cell(label) for label in labels)} | "
        f"{100 * (max(labels) - min(labels)):.1f} | {' / '.join(cell(val) for val in vals)} | "
        f"{100 * (max(vals) - min(vals)):.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a rounds_table.py workdir")
    parser.add_argument("--rows", required=True, help="comma-separated row names, e.g. synthetic-scratch-seg")
    parser.add_argument("--round", type=int, default=3)
    parser.add_argument("--seeds", default="1,2", help="seeds besides the row's own")
    parser.add_argument("overrides", nargs="*", help="config overrides every run gets, e.g. trainer=gpu")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    k = args.round
    print(
        f"| row | labels, round {k - 1} | labels, round {k}: row's seed / seeds {args.seeds} | spread | "
        f"val, round {k} | spread |"
    )
    print("|---|---|---|---|---|---|")
    for row in args.rows.split(","):
        print(table_row(args.workdir, row, k, seeds, args.overrides), flush=True)


if __name__ == "__main__":
    main()
