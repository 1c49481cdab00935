"""Pseudo-label throughput and memory: serial vs pipelined CRF, and peak RSS for 1x vs 4x images.

    python benchmarks/labels_throughput.py [--images 40] [--size 448] [--workers 2]

CRF-bound setting (what GPU users live in): VOC-sized images (448 x 448, about VOC's 500 x 375
pixel count) whose CAMs are cheap, here made on the fly from the GT masks (blurred class masks).
CPU-only setting: the same images with real ResNet-18 CAM inference on the same cores.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch

from isim.cam import multiscale_cams, normalize_cams
from isim.data import SyntheticSpec, VOCDataset, ensure_synthetic_voc
from isim.data.transforms import eval_transform
from isim.models import Classifier
from isim.pseudo_labels import LabelSettings, LabelStore, LabelWriter, label_image, pseudo_labels

SETTINGS = LabelSettings(
    threshold=0.25,
    confident=None,
    unary="label",
    gt_prob=0.7,
    gaussian={"sxy": 3, "compat": 3},
    bilateral={"sxy": 50, "srgb": 5, "compat": 10},
    iterations=10,
)


def cheap_cams(data: VOCDataset) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, CAMs, classes) per image: each present class's GT mask blurred and max-normalised."""
    for name in data.names:
        mask = data.read_mask(name)
        classes = np.unique(mask[(mask > 0) & (mask < 255)])
        cams = np.stack([cv2.GaussianBlur((mask == c).astype(np.float32), (0, 0), 12) for c in classes])
        yield name, cams / cams.max((1, 2), keepdims=True), classes


def network_cams(data: VOCDataset, net: Classifier) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(name, CAMs, classes) per image from real CAM inference (scale 1 + flip)."""
    transform = eval_transform()
    for index, name in enumerate(data.names):
        image = transform(image=data.read_image(name))["image"][None]
        labels = torch.from_numpy(data.labels[index])[None]
        cams = normalize_cams(multiscale_cams(net, image, scales=(1.0,), flip=True), labels)[0]
        classes = labels[0].nonzero().flatten()
        yield name, cams[classes].numpy(), (classes + 1).numpy()


def crf_only(data: VOCDataset) -> float:
    """The CRF alone, in one process, on images and CAMs already in memory."""
    items = [(data.read_image(name), maps, classes) for name, maps, classes in cheap_cams(data)]
    start = time.perf_counter()
    for image, maps, classes in items:
        pseudo_labels([image], [maps], [classes], SETTINGS)
    return len(items) / (time.perf_counter() - start)


def serial(data: VOCDataset, cams: Callable, store: LabelStore) -> float:
    """CAM then CRF, one image at a time in one process (what the reference implementations do)."""
    start = time.perf_counter()
    for name, maps, classes in cams(data):
        label_image(data.image_path(name), store.path(name), maps, classes, SETTINGS)
    return len(data) / (time.perf_counter() - start)


def pipelined(data: VOCDataset, cams: Callable, store: LabelStore, workers: int) -> float:
    writer = LabelWriter(store, data.image_path, SETTINGS, workers, progress=False)
    writer.submit(*next(iter(cams(data))))  # start the pool's processes outside the timing
    writer.close()
    writer = LabelWriter(store, data.image_path, SETTINGS, workers, progress=False)
    start = time.perf_counter()
    for item in cams(data):
        writer.submit(*item)
    writer.close()
    return len(data) / (time.perf_counter() - start)


def peak_rss(root: Path, images: int, workers: int) -> dict[str, float]:
    """Run the pipelined labeller over ``images`` images in a fresh process; its and its workers' peak RSS (MiB)."""
    names = [f"synthetic_{i:05d}" for i in range(images)]
    code = (
        f"import json, resource; from pathlib import Path; from benchmarks.labels_throughput import *; "
        f"data = VOCDataset(Path({str(root)!r}), 'train').subset({names!r}); "
        f"pipelined(data, cheap_cams, LabelStore(Path({str(root)!r}) / 'rss{images}'), {workers}); "
        f"print(json.dumps([resource.getrusage(r).ru_maxrss / 1024 for r in "
        f"(resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    main, child = json.loads(out.stdout.strip().splitlines()[-1])
    return {"main": main, "worker": child}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        spec = SyntheticSpec(num_train=4 * args.images, num_val=1, image_size=args.size, seed=11)
        root = ensure_synthetic_voc(Path(tmp) / "voc", spec)
        data = VOCDataset(root, "train").subset([f"synthetic_{i:05d}" for i in range(args.images)])
        store = lambda tag: LabelStore(Path(tmp) / tag)  # noqa: E731
        single = crf_only(data)
        rows = [("single-process CRF alone (images and CAMs in memory)", single, 1.0)]
        baseline = serial(data, cheap_cams, store("serial"))
        rows.append(("serial baseline: read, CAM, CRF, write, one image at a time", baseline, baseline / single))
        for workers in sorted({1, args.workers}):
            rate = pipelined(data, cheap_cams, store(f"pipe{workers}"), workers)
            rows.append((f"pipelined stage, {workers} CRF worker(s)", rate, rate / (workers * single)))
        net = Classifier("resnet18", 20, pretrained=False).eval()
        cpu_serial = serial(data, lambda d: network_cams(d, net), store("cpu_serial"))
        cpu_rows = [("serial: ResNet-18 CAM then CRF", cpu_serial)]
        for workers in sorted({1, args.workers}):
            rate = pipelined(data, lambda d: network_cams(d, net), store(f"cpu{workers}"), workers)
            cpu_rows.append((f"pipelined, {workers} CRF worker(s), torch 1 thread", rate))
        rss = {n: peak_rss(root, n, args.workers) for n in (args.images, 4 * args.images)}

    print(f"\nCRF-bound ({args.images} images of {args.size}x{args.size}, CAMs ready):\n")
    print("| configuration | images/s | vs serial | / (workers x CRF-alone rate) |")
    print("|---|---|---|---|")
    for label, rate, efficiency in rows:
        print(f"| {label} | {rate:.2f} | {rate / rows[1][1]:.2f}x | {efficiency:.2f} |")
    print(f"\nCPU-only (CAM inference and CRF share {len(os.sched_getaffinity(0))} cores):\n")
    print("| configuration | images/s | vs serial |")
    print("|---|---|---|")
    for label, rate in cpu_rows:
        print(f"| {label} | {rate:.2f} | {rate / cpu_rows[0][1]:.2f}x |")
    print(f"\nPeak RSS, pipelined with {args.workers} workers (MiB):\n")
    print("| images | main process | largest worker | 4x / 1x (main) |")
    print("|---|---|---|---|")
    for n, value in rss.items():
        ratio = value["main"] / rss[args.images]["main"]
        print(f"| {n} | {value['main']:.0f} | {value['worker']:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
