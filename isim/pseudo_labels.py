"""Pseudo-labels: CAMs -> seed labels -> dense CRF -> a label store of VOC-palette PNGs.

The store is a directory of ``<name>.png`` label maps plus ``manifest.json`` saying what made
them. PNGs are written atomically, so a store never holds a half-written file, and a re-run only
labels the images that are missing.

On CPU the CRF runs in worker processes fed through a bounded window of pending jobs, so the
main process keeps computing CAMs while the workers refine, and memory does not grow with the
dataset. Workers read each image from disk themselves: only the compact float16 CAMs of the
image's own classes cross the process boundary. On a GPU the torch CRF backend refines batches
of images on the device, right after their CAMs.
"""

from __future__ import annotations

import json
import math
import os
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from isim.crf import check_backend, crf_labels, crf_scores
from isim.data.classes import IGNORE_INDEX, voc_palette
from isim.errors import IsimError
from isim.io import write_json, write_png


@dataclass(frozen=True)
class LabelSettings:
    """How CAMs become labels; stored in the manifest so a store is never mixed from two settings."""

    threshold: float  # background score: pixels whose best CAM is below it are background seeds
    confident: tuple[float, float] | None  # (fg, bg) thresholds: pixels between them become 255 (IRN)
    unary: str  # "label": hard seeds trusted with gt_prob; "softmax": normalised scores
    gt_prob: float
    gaussian: Mapping[str, float] = field(default_factory=dict)
    bilateral: Mapping[str, float] = field(default_factory=dict)
    iterations: int = 10
    backend: str = "pydensecrf"  # the CRF's implementation (isim.crf.BACKENDS)
    # Nats by which a source's own background score is lowered (x exp(-bias)); a segmenter's softmax then labels
    # as if its background logit were lower. Sized to labels.foreground_share by iterate.logit_adjustment=share.
    background_bias: float = 0.0


def pseudo_labels(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    settings: LabelSettings,
    device: str | torch.device = "cpu",
    backgrounds: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """uint8 label maps from images (H, W, 3), their normalised CAMs (K, H, W) and the CAMs' class indices (K,);
    the torch backend refines all of them in one CRF call on ``device``. The background score of a pixel is its
    image's ``backgrounds`` map (H, W) where given (a segmenter's own background probability), else the
    threshold."""
    backgrounds = list(backgrounds) if backgrounds is not None else [None] * len(cams)
    if settings.confident is None:
        return _crf_at(images, cams, classes, backgrounds, settings.threshold, settings, device)
    fgs = _crf_at(images, cams, classes, backgrounds, settings.confident[0], settings, device)
    bgs = _crf_at(images, cams, classes, backgrounds, settings.confident[1], settings, device)
    labels = []
    for fg, bg in zip(fgs, bgs, strict=True):
        label = np.where(fg == 0, IGNORE_INDEX, fg).astype(np.uint8)
        label[(fg == 0) & (bg == 0)] = 0  # background only where even the low threshold finds no object
        labels.append(label)
    return labels


def _crf_at(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    classes: Sequence[np.ndarray],
    backgrounds: Sequence[np.ndarray | None],
    threshold: float,
    s: LabelSettings,
    device: str | torch.device,
) -> list[np.ndarray]:
    keys = [np.concatenate([[0], c]).astype(np.uint8) for c in classes]
    scale = math.exp(-s.background_bias)
    biased = [None if b is None else b.astype(np.float32) * scale for b in backgrounds]
    scores = [_background_first(c, b, threshold) for c, b in zip(cams, biased, strict=True)]
    crf = {
        "gaussian": s.gaussian,
        "bilateral": s.bilateral,
        "iterations": s.iterations,
        "backend": s.backend,
        "device": device,
    }
    if s.unary == "label":
        compact = crf_labels(images, [score.argmax(0) for score in scores], [len(k) for k in keys], s.gt_prob, **crf)
    elif s.unary == "softmax":
        compact = crf_scores(images, [score / score.sum(0, keepdims=True) for score in scores], **crf)
    else:
        raise IsimError(f"crf.unary={s.unary!r} is unknown; use label or softmax")
    return [k[c] for k, c in zip(keys, compact, strict=True)]


def _background_first(cams: np.ndarray, background: np.ndarray | None, threshold: float) -> np.ndarray:
    """Scores (1 + K, H, W): the background's (its own map, or the threshold everywhere), then the classes'."""
    if background is None:
        background = np.full(cams.shape[1:], threshold, np.float32)
    return np.concatenate([background[None], cams]).astype(np.float32)


def read_image_for(image_path: Path, cams: np.ndarray) -> np.ndarray:
    """The RGB image that ``cams`` (K, H, W) were computed from; a missing, unreadable or mis-sized one is an
    IsimError naming the file."""
    try:
        image = np.array(Image.open(image_path).convert("RGB"))
    except FileNotFoundError:
        raise IsimError(f"image {image_path} is missing") from None
    except OSError as error:
        raise IsimError(f"image {image_path} is corrupt or unreadable ({error})") from None
    if image.shape[:2] != cams.shape[1:]:
        raise IsimError(
            f"CAMs of {image_path} are {cams.shape[2]}x{cams.shape[1]} but the image is "
            f"{image.shape[1]}x{image.shape[0]}; were they computed from another image?"
        )
    return image


def label_image(
    image_path: Path,
    out_path: Path,
    cams: np.ndarray,
    classes: np.ndarray,
    s: LabelSettings,
    background: np.ndarray | None = None,
) -> None:
    """One store entry: read the image, refine, write the PNG atomically (runs in a worker)."""
    image = read_image_for(image_path, cams)
    (label,) = pseudo_labels([image], [cams.astype(np.float32)], [classes], s, backgrounds=[background])
    write_png(out_path, label, voc_palette())


class LabelStore:
    """A directory of label PNGs and the manifest that says what produced them."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"

    def path(self, name: str) -> Path:
        return self.root / f"{name}.png"

    def missing(self, names: list[str]) -> list[str]:
        """The names without a usable label: no PNG, or an empty or damaged one (a disk that filled up, a copy
        cut short), which the next run relabels."""
        return [name for name in names if not self.usable(name)]

    def usable(self, name: str) -> bool:
        path = self.path(name)
        try:
            with Image.open(path) as image:
                image.verify()  # reads the whole file and checks its CRCs without decoding the pixels
        except (OSError, SyntaxError, ValueError):  # missing, empty, truncated or not a PNG
            return False
        return True

    def read(self, name: str) -> np.ndarray:
        return np.array(Image.open(self.path(name)))

    def manifest(self) -> dict[str, Any] | None:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else None

    def open(self, producer: dict[str, Any], overwrite: bool, checkpoint: Path | None = None) -> None:
        """Start or continue the store for ``producer``; a store made by anything else is refused."""
        found = self.manifest()
        if found is not None and found["producer"] != producer and not overwrite:
            changed = sorted(key for key in producer if found["producer"].get(key) != producer[key])
            raise IsimError(
                f"label store {self.root} was made with other settings (differs in {', '.join(changed)}); "
                "pass labels.overwrite=true to replace it, or name=<new name> for a new store"
            )
        if overwrite:
            for png in self.root.glob("*.png"):
                png.unlink()
        write_json(self.manifest_path, {"producer": producer, "checkpoint": str(checkpoint), "complete": False})

    def close(self, counts: dict[str, Any]) -> None:
        write_json(self.manifest_path, {**self.manifest(), "complete": True, "counts": counts})


def class_priors(store: LabelStore, names: Sequence[str], image_labels: Sequence[np.ndarray]) -> np.ndarray:
    """Each class's share of the labelled pixels of the images that have it (background: of all images), in the
    store's labels of ``names`` (multi-hot foreground ``image_labels``, one row per name): the prior a segmenter
    trained on the store learnt, which relabelling divides out (``iterate.logit_adjustment``). GT-free."""
    pixels, totals = np.zeros(len(image_labels[0]) + 1), np.zeros(len(image_labels[0]) + 1)
    for name, labels in zip(tqdm(names, desc="class priors", unit="img", leave=False), image_labels, strict=True):
        if not store.path(name).is_file():
            continue  # skipped by its labels stage (labels.on_error=skip): the segmenter never saw it
        label = store.read(name)
        counted = label != IGNORE_INDEX
        present = np.concatenate([[0], np.flatnonzero(labels) + 1])
        pixels[present] += np.bincount(label[counted], minlength=len(pixels))[present]
        totals[present] += counted.sum()
    return np.where(totals > 0, pixels / np.maximum(totals, 1), 1.0)


class LabelWriter:
    """Refines CAMs into the store in ``workers`` processes (0: inline), at most ``2 x workers`` jobs in flight.

    With a ``device`` (the torch backend on a GPU) there are no workers: the CRF runs on the device in the
    main process, right after the CAMs, ``batch_size`` images per call."""

    def __init__(
        self,
        store: LabelStore,
        image_path: Callable[[str], Path],
        settings: LabelSettings,
        workers: int,
        on_error: str = "raise",
        progress: bool = True,
        device: torch.device | None = None,
        batch_size: int = 8,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise IsimError(f"labels.on_error={on_error!r} must be raise or skip")
        self.store, self.image_path, self.settings, self.on_error = store, image_path, settings, on_error
        self.device, self.batch_size = device, batch_size
        self.pool = ProcessPoolExecutor(workers, initializer=_one_torch_thread) if workers > 0 else None
        self.window = 2 * max(workers, 1)
        self.pending: deque[tuple[str, Future]] = deque()
        self.batch: list[tuple[str, np.ndarray, np.ndarray]] = []
        self.written: list[str] = []
        self.skipped: dict[str, str] = {}
        self.bar = tqdm(unit="img", desc="pseudo-labels", disable=not progress, dynamic_ncols=True)

    def submit(self, name: str, cams: np.ndarray, classes: np.ndarray, background: np.ndarray | None = None) -> None:
        """Label image ``name`` from its class scores (``pseudo_labels``), in the pool, inline or in a device batch."""
        if self.device is not None:
            self.batch.append((name, cams.astype(np.float32), classes, background))
            if len(self.batch) >= self.batch_size:
                self._label_batch()
            return
        compact = None if background is None else background.astype(np.float16)  # half the bytes to the workers
        args = (self.image_path(name), self.store.path(name), cams.astype(np.float16), classes, self.settings, compact)
        if self.pool is None:
            self._finish(name, lambda: label_image(*args))
            return
        while len(self.pending) >= self.window:
            self._collect()
        self.pending.append((name, self.pool.submit(label_image, *args)))

    def skip(self, name: str, message: str) -> None:
        """An image that never reached the CRF (unreadable in the data loader)."""
        self._fail(name, IsimError(message))

    def close(self) -> None:
        try:
            if self.batch:
                self._label_batch()
            while self.pending:
                self._collect()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)
            self.bar.close()

    def _label_batch(self) -> None:
        """The buffered images through one CRF call on the device; an unreadable image fails alone."""
        readable = []
        for name, cams, classes, background in self.batch:
            try:
                readable.append((name, read_image_for(self.image_path(name), cams), cams, classes, background))
            except IsimError as error:
                self._fail(name, error)
        self.batch = []
        if not readable:
            return
        names, images, cams, classes, backgrounds = zip(*readable, strict=True)
        labels = pseudo_labels(images, cams, classes, self.settings, self.device, backgrounds)
        for name, label in zip(names, labels, strict=True):
            self._finish(name, lambda name=name, label=label: write_png(self.store.path(name), label, voc_palette()))

    def _collect(self) -> None:
        name, future = self.pending.popleft()
        self._finish(name, future.result)

    def _finish(self, name: str, job: Callable[[], Any]) -> None:
        try:
            job()
        except IsimError as error:
            self._fail(name, error)
            return
        self.written.append(name)
        self.bar.update()

    def _fail(self, name: str, error: IsimError) -> None:
        """Stop the run (``on_error=raise``) or record the image as skipped."""
        if self.on_error == "raise":
            raise error
        self.skipped[name] = str(error)
        self.bar.update()


def _one_torch_thread() -> None:
    """CRF worker processes share the cores between them: one torch thread each (the torch backend)."""
    torch.set_num_threads(1)


def settings_from_config(
    crf: Mapping[str, Any], threshold: float, confident: Mapping[str, float] | None
) -> LabelSettings:
    return LabelSettings(
        threshold=float(threshold),
        confident=(float(confident["fg"]), float(confident["bg"])) if confident else None,
        unary=crf["unary"],
        gt_prob=float(crf["gt_prob"]),
        gaussian=dict(crf["gaussian"]),
        bilateral=dict(crf["bilateral"]),
        iterations=int(crf["iterations"]),
        backend=check_backend(crf["backend"]),
    )


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
