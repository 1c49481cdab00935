"""The dense CRF's backends side by side: images/s at VOC size, and how often they agree with pydensecrf.

    pip install -e '.[bench]'        # scikit-image: the real photos below ship inside its wheel
    python benchmarks/crf_backends.py [--repeats 2] [--synthetic 40]

Workload: scikit-image's colour photos resized to VOC's 500 x 375, each with 2, 3, 4 and 5 labels of
CAM-like scores (k-means colour segments, shifted and blurred, over a background score of 0.3), refined with
IRN's CRF (label unary, gt_prob 0.7, 10 iterations) and with the softmax unary. Rows: pydensecrf in one
process and through the labels stage's worker pool; crf.backend=torch on CPU with 1 thread, with all threads
and through the pool (1 thread per worker); on CUDA, when there is a GPU, one image per call and a batch.
"Agree" is the fraction of pixels with pydensecrf's label. Then label-store mIoU of both backends on the
synthetic set (VOC-size images, scores from blurred GT masks). Prints markdown tables.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
import torch
from labels_throughput import cheap_cams
from PIL import Image

from isim.data import VOC_CLASSES, SyntheticSpec, VOCDataset, ensure_synthetic_voc
from isim.metrics import confusion_matrix, mean_iou
from isim.pseudo_labels import LabelSettings, LabelStore, LabelWriter, pseudo_labels

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")
IRN = {
    "threshold": 0.3,
    "confident": None,
    "gt_prob": 0.7,
    "gaussian": {"sxy": 3, "compat": 3},
    "bilateral": {"sxy": 50, "srgb": 5, "compat": 10},
    "iterations": 10,
}
Problem = tuple[np.ndarray, np.ndarray, np.ndarray]  # image, CAMs (K, H, W), class indices (K,)


def voc_size_problems(root: Path) -> list[Problem]:
    """The photos as VOC-size JPEGs in ``root``/JPEGImages (read back, so that every row sees the same pixels as
    the labels stage's workers, which read the JPEGs), each with 2-5 labels of scores; the files are <index>.jpg."""
    (root / "JPEGImages").mkdir(parents=True)
    problems = []
    for photo in PHOTOS:
        image = cv2.resize(getattr(skimage.data, photo)()[..., :3], (500, 375), interpolation=cv2.INTER_AREA)
        for labels in (2, 3, 4, 5):
            path = root / "JPEGImages" / f"{len(problems)}.jpg"
            Image.fromarray(image).save(path, quality=95)
            decoded = np.array(Image.open(path).convert("RGB"))
            problems.append((decoded, *cam_like_scores(decoded, labels - 1, seed=labels)))
    return problems


def cam_like_scores(image: np.ndarray, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` of the image's k-means colour segments, each shifted a little, blurred and max-normalised."""
    pixels = image.reshape(-1, 3).astype(np.float32)
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_MAX_ITER, 10, 1.0)
    _, segment, _ = cv2.kmeans(pixels, classes + 1, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    segment = segment.reshape(image.shape[:2])
    cams = []
    for k in range(1, classes + 1):
        shifted = np.roll(segment == k, (6 * k, -5 * k), (0, 1)).astype(np.float32)
        cam = cv2.GaussianBlur(shifted, (0, 0), 12)
        cams.append(cam / max(float(cam.max()), 1e-5))
    return np.stack(cams), np.arange(1, classes + 1)


def in_memory(problems: list[Problem], settings: LabelSettings, device: str = "cpu", batch: int = 1) -> Callable:
    def run() -> list[np.ndarray]:
        labels = []
        for start in range(0, len(problems), batch):
            images, cams, classes = zip(*problems[start : start + batch], strict=True)
            labels += pseudo_labels(images, cams, classes, settings, device)
        if device != "cpu":
            torch.cuda.synchronize()
        return labels

    return run


def pooled(problems: list[Problem], settings: LabelSettings, workers: int, root: Path) -> Callable:
    """The labels stage's writer: worker processes read each JPEG, refine and write the PNG."""

    def run() -> list[np.ndarray]:
        store = LabelStore(root / f"store-{settings.backend}")
        writer = LabelWriter(store, lambda name: root / "JPEGImages" / f"{name}.jpg", settings, workers, progress=False)
        for index, (_, cams, classes) in enumerate(problems):
            writer.submit(str(index), cams, classes)
        writer.close()
        return [store.read(str(index)) for index in range(len(problems))]

    return run


def timed(run: Callable, count: int, repeats: int) -> tuple[float, list[np.ndarray]]:
    """The best images/s of ``repeats`` runs after a warm-up run (which also fills the smoothness-kernel cache)."""
    labels = run()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        labels = run()
        best = max(best, count / (time.perf_counter() - start))
    return best, labels


def agreement(ours: list[np.ndarray], reference: list[np.ndarray]) -> float:
    return sum(int((a == b).sum()) for a, b in zip(ours, reference, strict=True)) / sum(a.size for a in reference)


def synthetic_store_miou(images: int) -> list[tuple[str, float, float]]:
    """Label mIoU against GT of both backends on the synthetic set at VOC size, both unaries."""
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_synthetic_voc(Path(tmp) / "voc", SyntheticSpec(num_train=images, num_val=1, image_size=448))
        data = VOCDataset(root, "train")
        problems = [(data.read_image(name), cams, classes) for name, cams, classes in cheap_cams(data)]
        masks = [torch.from_numpy(data.read_mask(name)) for name in data.names]
    rows = []
    for unary in ("label", "softmax"):
        scores = []
        for backend in ("pydensecrf", "torch"):
            labels = in_memory(problems, LabelSettings(unary=unary, backend=backend, **IRN))()
            confusion = sum(
                confusion_matrix(torch.from_numpy(label), mask, len(VOC_CLASSES))
                for label, mask in zip(labels, masks, strict=True)
            )
            scores.append(100 * mean_iou(confusion))
        rows.append((unary, *scores))
    return rows


def backend_rows(problems: list[Problem], unary: str, cores: int, root: Path, repeats: int) -> list[tuple]:
    """(unary, backend, how, images/s, agreement with pydensecrf in one process) per configuration."""
    reference, ours = (LabelSettings(unary=unary, backend=backend, **IRN) for backend in ("pydensecrf", "torch"))
    configurations = [  # (backend, how, torch threads, run)
        ("pydensecrf", "1 process", 1, in_memory(problems, reference)),
        ("pydensecrf", f"labels stage pool, {cores} workers", 1, pooled(problems, reference, cores, root)),
        ("torch CPU", "1 thread", 1, in_memory(problems, ours)),
        ("torch CPU", f"{cores} threads", cores, in_memory(problems, ours)),
        ("torch CPU", f"labels stage pool, {cores} workers x 1 thread", 1, pooled(problems, ours, cores, root)),
    ]
    if torch.cuda.is_available():
        configurations += [("torch CUDA", f"batch {b}", 1, in_memory(problems, ours, "cuda", b)) for b in (1, 16)]
    measured = []
    for backend, how, threads, run in configurations:
        torch.set_num_threads(threads)
        measured.append((backend, how, *timed(run, len(problems), repeats)))
    baseline = measured[0][3]
    return [(unary, backend, how, rate, agreement(labels, baseline)) for backend, how, rate, labels in measured]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=40, help="synthetic images for the store mIoU (0: skip)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        problems = voc_size_problems(Path(tmp))
        rows = [
            row
            for unary in ("label", "softmax")
            for row in backend_rows(problems, unary, cores, Path(tmp), args.repeats)
        ]
    stores = synthetic_store_miou(args.synthetic) if args.synthetic else []
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    print(f"\n{len(problems)} VOC-size problems ({len(PHOTOS)} photos x 2-5 labels), {cores} cores, {device}\n")
    print("| unary | backend | how | images/s | vs pydensecrf 1 process | agree with pydensecrf |")
    print("|---|---|---|---|---|---|")
    for unary, backend, how, rate, agree in rows:
        base = next(row[3] for row in rows if row[0] == unary)
        print(f"| {unary} | {backend} | {how} | {rate:.2f} | {rate / base:.2f}x | {100 * agree:.3f}% |")
    if stores:
        print(f"\nLabel mIoU on {args.synthetic} synthetic 448 x 448 images (scores: blurred GT masks):\n")
        print("| unary | pydensecrf | torch | difference (points) |")
        print("|---|---|---|---|")
        for unary, reference, torch_miou in stores:
            print(f"| {unary} | {reference:.2f} | {torch_miou:.2f} | {torch_miou - reference:+.3f} |")


if __name__ == "__main__":
    main()
