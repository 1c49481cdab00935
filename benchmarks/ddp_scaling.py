"""DDP scaling on CPU: the labels stage and a segmenter training epoch with 1 vs 2 gloo processes.

    python benchmarks/ddp_scaling.py [--images 200] [--epochs 2]

Each process is held to one core (OMP_NUM_THREADS=1: one torch thread; crf.workers=1; no DataLoader
worker processes), so the figures measure the distribution itself. Runs the real ``train.py`` stages
on a generated synthetic set in a temporary directory and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(workdir: Path, *overrides: str) -> dict:
    """Run train.py in ``workdir``; its summary.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "WANDB_SILENT": "true"}
    command = [sys.executable, str(ROOT / "train.py"), *overrides, "logger=csv", "trainer.enable_progress_bar=false"]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(overrides)} failed:\n{result.stderr[-3000:]}")
    run_dir = next(arg.split("=", 1)[1] for arg in overrides if arg.startswith("hydra.run.dir="))
    return json.loads((workdir / run_dir / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200, help="synthetic training images")
    parser.add_argument("--epochs", type=int, default=3, help="segmenter epochs of the long run (the short has 1)")
    parser.add_argument("--batch", type=int, default=8, help="global training batch (per process: batch / processes)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="isim-ddp-"))
    common = [f"data.synthetic.num_train={args.images}", "data.synthetic.num_val=16", "data.num_workers=0",
              "crf.workers=1", "cam.max_epochs=1", "cam.scales=[1.0,2.0]", f"data.batch_size={args.batch}",
              "name=bench"]  # fmt: skip
    train(workdir, *common, "stage=cam", "hydra.run.dir=runs/bench/cam")
    half = workdir / "train_half.txt"  # the first half of the train split
    names = (workdir / "data/synthetic/ImageSets/Segmentation/train.txt").read_text().split()
    half.write_text("\n".join(names[: len(names) // 2]) + "\n")
    rates: dict[str, dict[int, float]] = {"labels stage (CAMs + CRF)": {}, "segmenter training epoch": {}}
    # Steady-state rates: the difference of a long and a short run cancels process start-up and set-up.
    for processes, trainer in ((1, "cpu"), (2, "ddp_cpu")):
        seconds = [train(workdir, *common, "stage=labels", f"trainer={trainer}", f"labels.split={split}",
                         f"hydra.run.dir=runs/bench/labels_{trainer}_{index}")["timings"]["label_s"]
                   for index, split in enumerate((half, "train"))]  # fmt: skip
        rates["labels stage (CAMs + CRF)"][processes] = (len(names) - len(names) // 2) / (seconds[1] - seconds[0])
        seg = [*common, "stage=seg", "data.labels=gt", f"trainer={trainer}", "+trainer.limit_val_batches=0"]
        seconds = [train(workdir, *seg, f"seg.max_epochs={epochs}", "ckpt_path=null",
                         f"hydra.run.dir=runs/bench/seg_{trainer}_{epochs}")["timings"]["train_s"]
                   for epochs in (1, args.epochs)]  # fmt: skip
        rates["segmenter training epoch"][processes] = args.images * (args.epochs - 1) / (seconds[1] - seconds[0])
    print(
        f"\n{args.images} images of 128 px, global batch {args.batch}; each process: 1 torch thread, 1 CRF worker, "
        "no loader workers\n"
    )
    print("| workload | processes | images/s | speed-up | efficiency |")
    print("|---|---|---|---|---|")
    for workload, by_processes in rates.items():
        for processes, rate in by_processes.items():
            speedup = rate / by_processes[1]
            print(f"| {workload} | {processes} | {rate:.2f} | {speedup:.2f}x | {speedup / processes:.2f} |")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
