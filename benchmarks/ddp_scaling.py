"""DDP scaling on CPU: the labels stage and a segmenter training epoch with 1 vs 2 gloo processes.

    python benchmarks/ddp_scaling.py [--images 200] [--epochs 3] [--batch 8] [--repeats 2]

Each process is held to one core (OMP_NUM_THREADS=1: one torch thread; crf.workers=1; no DataLoader
worker processes), so the figures measure the distribution itself. Runs the real ``train.py`` stages
on a generated synthetic set in a temporary directory and prints a markdown table. Training is also
run as two independent single-process runs at once (each with half the global batch, no DDP): the
machine's own two-process ceiling, which separates what DDP costs from what sharing the cores costs.
Rates are steady-state (a long minus a short run, so start-up is not counted), median of the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "WANDB_SILENT": "true"}


def launch(workdir: Path, *overrides: str) -> tuple[subprocess.Popen, Path]:
    """Start train.py in ``workdir``; the process and its run dir."""
    command = [sys.executable, str(ROOT / "train.py"), *overrides, "logger=csv", "trainer.enable_progress_bar=false"]
    process = subprocess.Popen(
        command, cwd=workdir, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    run_dir = next(arg.split("=", 1)[1] for arg in overrides if arg.startswith("hydra.run.dir="))
    return process, workdir / run_dir


def finish(process: subprocess.Popen, run_dir: Path) -> dict:
    """Wait for a launched run; its summary.json."""
    _, stderr = process.communicate()
    if process.returncode != 0:
        sys.exit(f"{' '.join(process.args)} failed:\n{stderr[-3000:]}")
    return json.loads((run_dir / "summary.json").read_text())


def train(workdir: Path, *overrides: str) -> dict:
    return finish(*launch(workdir, *overrides))


def labels_rate(workdir: Path, common: list[str], trainer: str, half: Path, images: int) -> float:
    """Labelling images/s: the whole split minus its first half."""
    seconds = []
    for index, split in enumerate((half, "train")):
        summary = train(
            workdir,
            *common,
            "stage=labels",
            f"trainer={trainer}",
            f"labels.split={split}",
            "labels.overwrite=true",
            f"hydra.run.dir=runs/bench/labels_{trainer}_{index}",
        )
        seconds.append(summary["timings"]["label_s"])
    return (images - images // 2) / (seconds[1] - seconds[0])


def training_rate(
    workdir: Path, seg: list[str], trainer: str, batch: int, copies: int, epochs: int, images: int
) -> float:
    """Training images/s summed over ``copies`` runs at once, each with global batch ``batch``."""
    seconds = {}
    for n in (1, epochs):
        runs = [
            launch(
                workdir,
                *seg,
                f"trainer={trainer}",
                f"data.batch_size={batch}",
                f"seg.max_epochs={n}",
                f"hydra.run.dir=runs/bench/seg_{trainer}_{copies}_{copy}_{n}",
            )
            for copy in range(copies)
        ]
        seconds[n] = [finish(*run)["timings"]["train_s"] for run in runs]
    return sum(images * (epochs - 1) / (long - short) for short, long in zip(seconds[1], seconds[epochs], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=3, help="segmenter epochs of the long run (the short has 1)")
    parser.add_argument("--batch", type=int, default=8, help="global training batch (per process: batch / processes)")
    parser.add_argument("--repeats", type=int, default=2, help="measurements per configuration (median)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="isim-ddp-"))
    common = [
        f"data.synthetic.num_train={args.images}",
        "data.synthetic.num_val=16",
        "data.num_workers=0",
        "crf.workers=1",
        "cam.max_epochs=1",
        "cam.scales=[1.0,2.0]",
        "name=bench",
    ]
    train(workdir, *common, "stage=cam", "hydra.run.dir=runs/bench/cam")
    half = workdir / "train_half.txt"  # the first half of the train split
    names = (workdir / "data/synthetic/ImageSets/Segmentation/train.txt").read_text().split()
    half.write_text("\n".join(names[: len(names) // 2]) + "\n")
    # No validation and no checkpoints: rank 0's serial file writing is not what DDP distributes.
    seg = [*common, "stage=seg", "data.labels=gt", "+trainer.limit_val_batches=0", "callbacks=none", "ckpt_path=null"]
    labels = partial(labels_rate, workdir, common, half=half, images=len(names))
    training = partial(training_rate, workdir, seg, epochs=args.epochs, images=args.images)
    configs = {  # (workload, processes, how they run): measurement
        ("labels stage (CAMs + CRF)", 1, "1 process"): partial(labels, "cpu"),
        ("labels stage (CAMs + CRF)", 2, "DDP, gloo"): partial(labels, "ddp_cpu"),
        ("segmenter training", 1, "1 process"): partial(training, "cpu", args.batch, 1),
        ("segmenter training", 2, "2 independent runs, no DDP"): partial(training, "cpu", args.batch // 2, 2),
        ("segmenter training", 2, "DDP, gloo"): partial(training, "ddp_cpu", args.batch, 1),
    }
    measured: dict[tuple, list[float]] = {row: [] for row in configs}
    for _ in range(args.repeats):  # interleaved, so that drifts of the machine hit every configuration
        for row, measure in configs.items():
            measured[row].append(measure())
            print(f"{row}: {measured[row][-1]:.2f} images/s", file=sys.stderr, flush=True)
    print(
        f"\n{args.images} images of 128 px, global batch {args.batch}; each process: 1 torch thread, 1 CRF worker, "
        f"no loader workers; median of {args.repeats}\n"
    )
    print("| workload | processes | how | images/s | speed-up | efficiency |")
    print("|---|---|---|---|---|---|")
    for (workload, processes, how), rates in measured.items():
        rate = statistics.median(rates)
        speedup = rate / statistics.median(measured[(workload, 1, "1 process")])
        print(f"| {workload} | {processes} | {how} | {rate:.2f} | {speedup:.2f}x | {speedup / processes:.2f} |")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
