"""A synthetic weakly-supervised segmentation set, written to disk in the PASCAL VOC 2012 layout.

It is built to be hard in the way real photos are for WSSS. Every object has a small
class-specific *part* (a saturated hue, solid or striped: 10 hues x 2 patterns = 20 classes) on
a larger *body* (dark, finely textured, only faintly tinted with the part's hue, so it tells
two classes apart at best), over textured backgrounds. An image-level classifier only needs the
part, so its CAM covers the part and little of the body, just as a CAM finds a cat's face and
misses its fur; the body is still the class's own, as fur is, so a segmenter can learn it.

Every image is generated from ``(seed, index)`` alone, so the set is the same on every machine.
A held-out variant (``data=synthetic_heldout``) changes what the default was tuned on: fewer classes,
photo-like backgrounds (1/f noise, the spectrum of natural images) and images of odd, varying sizes.
"""

from __future__ import annotations

import colorsys
import json
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from isim.data.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from isim.errors import IsimError
from isim.io import write_png

MANIFEST = "isim_synthetic.json"
ORIGINAL_KEYS = ("num_train", "num_val", "image_size", "max_objects", "seed")  # what generator 2's manifests hold
BACKGROUNDS = ("clutter", "natural")
GENERATOR = 2  # bumped whenever the images change, so an older generated copy is refused, not reused
NUM_HUES = 10


@dataclass(frozen=True)
class SyntheticSpec:
    """What the generator makes; stored in the dataset's manifest to detect stale copies."""

    num_train: int = 300
    num_val: int = 100
    image_size: int = 128
    max_objects: int = 3
    seed: int = 0
    num_classes: int = 20  # objects are of the first num_classes VOC classes
    background: str = "clutter"  # clutter: light blotches and stripes; natural: 1/f noise, as photos have
    size_jitter: float = 0.0  # each side is image_size x a factor in [1 - size_jitter, 1 + size_jitter]

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise IsimError(f"data.synthetic.background={self.background!r}: use one of {', '.join(BACKGROUNDS)}")
        if not 1 <= self.num_classes < len(VOC_CLASSES):
            raise IsimError(f"data.synthetic.num_classes={self.num_classes} must be in 1..{len(VOC_CLASSES) - 1}")


def ensure_synthetic_voc(root: str | Path, spec: SyntheticSpec) -> Path:
    """Generate the set into ``root`` unless an identical one is already there."""
    root = Path(root)
    manifest = root / MANIFEST
    if not manifest.exists():
        if root.exists() and any(root.iterdir()):
            raise IsimError(f"{root} exists and is not an isim synthetic set; set data.root elsewhere")
        _generate(root, spec)
    found = json.loads(manifest.read_text())
    if found != _manifest(spec):
        raise IsimError(
            f"{root} holds a synthetic set made with {found}, but the config asks for "
            f"{_manifest(spec)}; delete {root} or set data.root to another directory"
        )
    return root


def _generate(root: Path, spec: SyntheticSpec) -> None:
    # Build in a sibling directory and rename, so an interrupted run never leaves half a dataset.
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("JPEGImages", "SegmentationClass", "Annotations", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)
    splits = {"train": range(spec.num_train), "val": range(spec.num_train, spec.num_train + spec.num_val)}
    palette = voc_palette()
    for split, indices in splits.items():
        names = [f"synthetic_{i:05d}" for i in indices]
        for name, index in zip(tqdm(names, desc=f"generating synthetic {split}", leave=False), indices, strict=True):
            image, mask, objects = render_image(spec, index)
            cv2.imwrite(str(tmp / "JPEGImages" / f"{name}.jpg"), image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            write_png(tmp / "SegmentationClass" / f"{name}.png", mask, palette)
            _write_annotation(tmp / "Annotations" / f"{name}.xml", name, image.shape, objects)
        (tmp / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    (tmp / MANIFEST).write_text(json.dumps(_manifest(spec), indent=2) + "\n")
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, root)
    except OSError:
        # Another process (a sweep's parallel job) generated the same set first: keep its copy.
        if not (root / MANIFEST).exists():
            raise
        shutil.rmtree(tmp)


def _manifest(spec: SyntheticSpec) -> dict:
    # Keys at their defaults are left out, so sets generated before those keys existed stay valid.
    defaults = asdict(SyntheticSpec())
    kept = {key: value for key, value in asdict(spec).items() if key in ORIGINAL_KEYS or value != defaults[key]}
    return {**kept, "generator": GENERATOR}


def class_hue(class_index: int) -> float:
    """Classes k and k+10 share a hue."""
    return ((class_index - 1) % NUM_HUES) / NUM_HUES


def part_color(class_index: int) -> tuple[float, float, float]:
    """The class-specific part colour (RGB in [0, 1])."""
    return colorsys.hsv_to_rgb(class_hue(class_index), 0.85, 0.95)


def render_image(spec: SyntheticSpec, index: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, tuple]]]:
    """Draw image ``index``: (RGB uint8 image, uint8 class mask with 255 boundaries, [(class, box)])."""
    rng = np.random.default_rng([spec.seed, index])
    shape = _image_shape(rng, spec)
    image = _background(rng, shape) if spec.background == "clutter" else _natural_background(rng, shape)
    labels = np.zeros(shape, np.uint8)
    objects = []
    for _ in range(int(rng.integers(1, spec.max_objects + 1))):
        class_index = int(rng.integers(1, spec.num_classes + 1))
        body, part = _object_shape(rng, spec.image_size, labels)
        image = np.where(body[..., None], _body_texture(rng, shape, class_index), image)
        image = np.where(part[..., None], _part_texture(rng, shape, class_index), image)
        labels[body | part] = class_index
        objects.append((class_index, _box(body | part)))
    mask = _with_boundaries(labels)
    return np.clip(image * 255, 0, 255).astype(np.uint8), mask, objects


def _image_shape(rng: np.random.Generator, spec: SyntheticSpec) -> tuple[int, int]:
    if not spec.size_jitter:
        return spec.image_size, spec.image_size  # no draw: the default set's images stay as they were
    factors = 1 + spec.size_jitter * (2 * rng.random(2) - 1)
    return tuple(int(spec.image_size * factor) | 1 for factor in factors)  # odd sides, as many real photos have


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int, channels: int = 1) -> np.ndarray:
    coarse = rng.random((cells, cells, channels)).astype(np.float32)
    fine = cv2.resize(coarse, shape[::-1], interpolation=cv2.INTER_CUBIC)
    return fine.reshape(*shape, channels)


def _background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Light, low-saturation clutter: blotches at two scales plus, often, a striped texture."""
    base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.6, 0.9)))
    blotches = 0.18 * (_smooth_noise(rng, shape, 4, 3) - 0.5) + 0.12 * (_smooth_noise(rng, shape, 12, 3) - 0.5)
    image = base + blotches
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 14)
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        image = image + 0.06 * stripes[..., None]
    return np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)


def _natural_background(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """1/f noise (the spectrum of natural images) around a random colour of any brightness and saturation,
    mostly in brightness, as in photos: edges and textures at every scale, and dark or coloured regions that the
    default's light clutter never has."""
    frequencies = np.hypot(*np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.rfftfreq(shape[1]), indexing="ij"))
    amplitude = 1 / np.maximum(frequencies, 1 / max(shape))
    spectrum = amplitude[..., None] * np.exp(2j * np.pi * rng.random((*amplitude.shape, 4)))
    noise = np.fft.irfft2(spectrum, s=shape, axes=(0, 1))
    noise = (noise - noise.mean((0, 1))) / (noise.std((0, 1)) + 1e-8)
    base = np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.1, 0.6), rng.uniform(0.3, 0.8)))
    return np.clip(base + 0.15 * noise[..., :1] + 0.04 * noise[..., 1:], 0, 1)


def _body_texture(rng: np.random.Generator, shape: tuple[int, int], class_index: int) -> np.ndarray:
    """Dark, with fine fur-like grain, faintly tinted with the class's hue."""
    hue = (class_hue(class_index) + rng.uniform(-0.02, 0.02)) % 1
    base = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.3, 0.5), rng.uniform(0.25, 0.45)))
    grain = rng.normal(0, 0.06, (*shape, 1)) + 0.1 * (_smooth_noise(rng, shape, 10) - 0.5)
    return np.clip(base + grain, 0, 1)


def _part_texture(rng: np.random.Generator, shape: tuple[int, int], class_index: int) -> np.ndarray:
    color = np.array(part_color(class_index)) * rng.uniform(0.85, 1.0)
    texture = np.broadcast_to(color, (*shape, 3)).copy()
    if class_index > NUM_HUES:  # the second ten classes carry dark stripes on the same hues
        yy, xx = np.mgrid[: shape[0], : shape[1]]
        period = rng.uniform(4, 6)
        texture[np.sin((xx + yy * rng.uniform(-1, 1)) * 2 * np.pi / period) > 0.3] *= 0.35
    return np.clip(texture + rng.normal(0, 0.02, texture.shape), 0, 1)


def _object_shape(rng: np.random.Generator, size: int, taken: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A rotated elliptic body with a round part on one end, of a size for ``size`` px images, placed mostly over
    the free space of the label map ``taken``."""
    best = None
    extent = np.array(taken.shape[::-1])  # (width, height), as cv2 takes points
    for _ in range(20):
        scale = rng.uniform(0.8, 1.2) * size / 128
        axes = (int(rng.uniform(22, 32) * scale), int(rng.uniform(14, 21) * scale))
        angle = rng.uniform(0, 360)
        margin = axes[0] + 4
        fits = (extent > 2 * margin).all()
        center = rng.integers(margin, extent - margin) if fits else extent // 2
        body = np.zeros(taken.shape, np.uint8)
        cv2.ellipse(body, tuple(int(c) for c in center), axes, angle, 0, 360, 1, -1)
        theta = np.deg2rad(angle) + (np.pi if rng.random() < 0.5 else 0)
        tip = center + 0.95 * axes[0] * np.array([np.cos(theta), np.sin(theta)])
        part = np.zeros_like(body)
        cv2.circle(part, tuple(int(c) for c in tip), int(rng.uniform(10, 13) * scale), 1, -1)
        overlap = (taken[body.astype(bool) | part.astype(bool)] > 0).mean()
        if best is None or overlap < best[0]:
            best = (overlap, body.astype(bool), part.astype(bool))
        if overlap < 0.05:
            break
    return best[1], best[2]


def _with_boundaries(labels: np.ndarray) -> np.ndarray:
    """VOC marks a band around every object outline as 255 (ignored in evaluation)."""
    kernel = np.ones((3, 3), np.uint8)
    grown = cv2.dilate(labels, kernel)
    shrunk = cv2.erode(labels, kernel)
    mask = labels.copy()
    mask[(grown != labels) | (shrunk != labels)] = IGNORE_INDEX
    return mask


def _box(region: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(region)
    return int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1


def _write_annotation(path: Path, name: str, shape: tuple, objects: list[tuple[int, tuple]]) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in zip(("height", "width", "depth"), shape, strict=True):
        ET.SubElement(size, key).text = str(value)
    for class_index, (xmin, ymin, xmax, ymax) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = VOC_CLASSES[class_index]
        ET.SubElement(obj, "difficult").text = "0"
        box = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (xmin, ymin, xmax, ymax), strict=True):
            ET.SubElement(box, key).text = str(value)
    ET.ElementTree(root).write(path)
