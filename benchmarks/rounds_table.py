"""Do ISIM's rounds improve the labels? Round-by-round label and val mIoU over data sets, starting weights and
label sources, each a real ``python train.py`` (cam -> labels -> rounds) under the strict protocol (no GT in any
decision: ``uses_gt`` is checked false).

    python benchmarks/rounds_table.py [--sets synthetic,synthetic_heldout] [--inits scratch,lite0]
                                      [--sources seg,cam,cam+seg] [--rounds 3] [--epochs 5] [--workdir DIR]
                                      [--jobs N] [--plots DIR] [override ...]

Rows of one set and init share their CAM stage and round-0 labels (copied), so a row costs its rounds only.
``lite0`` starts from ImageNet weights installed offline (``python benchmarks/lite0_weights.py`` writes
``data/weights/tf_efficientnet_lite0.pth``) with IRN's effective SGD.
A 2-core CPU needs ~15 min for the first row of a set and init and ~10 min for each further row (Lite0 on
the held-out set: ~40 and ~15 min; from scratch there, session 15: CAM stage 650 s, labels 332 s, rounds 5-7 min
each, partly with the test suite alongside); keep one row at a time there (two Lite0 rows at once on 2 cores took
2.5x as long as one after the other). ``--jobs N`` runs N rows at once (first the rows that make each set and init's
CAM stage, then the others): for a GPU machine, with ``trainer=gpu crf.backend=torch`` as overrides, which
every run gets. Prints a markdown table and, with ``--plots DIR``, writes ``DIR/rounds_<set>.png``: each row's
label mIoU per round. Every row is sized to the default experiment's size prior (``labels.foreground_share``:
the round-0 threshold, each round's background or CAM threshold); ``labels.foreground_share=0.15`` as an override
gives another. The README's tables of fixed thresholds (0.15 from scratch, ISIM's 0.3 from Lite0, tau = 1) came
from commit adda23d.
A workdir keeps every run (re-running continues where it stopped, and a re-run of finished rows only reprints
and replots them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from isim.visualize import rounds_plot

ROOT = Path(__file__).resolve().parents[1]
LITE0 = ROOT / "data/weights/tf_efficientnet_lite0.pth"
INITS = {
    "scratch": [],
    "lite0": [
        "model.backbone=tf_efficientnet_lite0",
        f"model.pretrained={LITE0}",
        "model.classifier.momentum=1e-4",  # IRN's effective SGD: momentum 0.9 at lr 0.1 wrecks pretrained features
    ],
}


def run_row(workdir: Path, data: str, init: str, source: str, args: argparse.Namespace, shared: Path | None) -> Path:
    """One iterate run; its experiment directory. ``shared``: an experiment whose cam and labels to reuse."""
    name = row_name(data, init, source)
    experiment = workdir / "runs" / name
    if shared is not None and not (experiment / "labels/summary.json").is_file():
        for step in ("cam", "labels"):
            shutil.copytree(shared / step, experiment / step, dirs_exist_ok=True)
    overrides = [
        f"name={name}",
        f"data={data}",
        f"iterate.label_source={source}",
        f"iterate.rounds={args.rounds}",
        f"iterate.epochs_per_round={args.epochs}",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        *INITS[init],
        *args.overrides,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "WANDB_SILENT": "true"}
    log = experiment.parent / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as file:
        code = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *overrides], cwd=workdir, env=env, stdout=file, stderr=file
        ).returncode
    if code != 0:
        raise SystemExit(f"{name} failed (exit code {code}); see {log}")
    print(table_row(experiment, data, init, source, args.rounds), flush=True)
    return experiment


def row_name(data: str, init: str, source: str) -> str:
    return f"{data}-{init}-{source.replace('+', '_')}"


def round_mious(experiment: Path, rounds: int) -> tuple[list[float | None], list[float | None]]:
    """Label mIoU of rounds 0..rounds and val mIoU of rounds 1..rounds (None where a round has none)."""
    summary = json.loads((experiment / "iterate/summary.json").read_text())
    assert not summary["uses_gt"], f"{experiment}: a GT-informed choice"
    rows = {row["round"]: row for row in summary["rounds"]}
    labels = [rows.get(k, {}).get("label_miou") for k in range(rounds + 1)]
    return labels, [rows.get(k, {}).get("val_miou") for k in range(1, rounds + 1)]


def table_row(experiment: Path, data: str, init: str, source: str, rounds: int) -> str:
    labels, vals = round_mious(experiment, rounds)
    return f"| {data} | {init} | {source} | {' / '.join(map(cell, labels))} | {' / '.join(map(cell, vals))} |"


def plot_sets(workdir: Path, combos: list[tuple[str, str]], sources: list[str], rounds: int, out: Path) -> None:
    """One PNG per data set, ``<out>/rounds_<set>.png``: the label mIoU of its rows against the round."""
    for data in dict.fromkeys(data for data, _ in combos):
        series = {
            f"{init}, {source}": round_mious(workdir / "runs" / row_name(data, init, source), rounds)[0]
            for combo_data, init in combos
            if combo_data == data
            for source in sources
        }
        rounds_plot(range(rounds + 1), series, out / f"rounds_{data}.png", f"label mIoU per round: {data}")


def cell(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="synthetic,synthetic_heldout")
    parser.add_argument("--inits", default="scratch,lite0")
    parser.add_argument("--sources", default="seg,cam,cam+seg")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="rows run at once")
    parser.add_argument("--plots", type=Path, default=None, help="a directory for one label-mIoU plot per set")
    parser.add_argument("overrides", nargs="*", help="config overrides every run gets, e.g. trainer=gpu")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="isim-rounds-"))
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    if "lite0" in args.inits and not LITE0.is_file():
        raise SystemExit(f"{LITE0} is missing: run benchmarks/lite0_weights.py first, or --inits scratch")
    combos = [(data, init) for data in args.sets.split(",") for init in args.inits.split(",")]
    first, *others = args.sources.split(",")
    with ThreadPoolExecutor(args.jobs) as pool:
        made = pool.map(lambda combo: run_row(workdir, *combo, first, args, None), combos)
        shared = dict(zip(combos, made, strict=True))
        rows = [(*combo, source) for combo in combos for source in others]
        list(pool.map(lambda row: run_row(workdir, *row, args, shared[row[:2]]), rows))
    lines = [
        table_row(workdir / "runs" / row_name(data, init, source), data, init, source, args.rounds)
        for data, init in combos
        for source in (first, *others)
    ]
    rounds = " / ".join(str(k) for k in range(args.rounds + 1))
    print(f"\n{args.epochs} segmenter epochs a round; runs in {workdir}\n")
    print(f"| data | init | label source | label mIoU, rounds {rounds} | val mIoU, rounds 1-{args.rounds} |")
    print("|---|---|---|---|---|")
    print("\n".join(lines))
    if args.plots is not None:
        plot_sets(workdir, combos, [first, *others], args.rounds, args.plots)


if __name__ == "__main__":
    main()
