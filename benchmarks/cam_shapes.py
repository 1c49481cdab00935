"""Multi-scale CAM inference on images of many sizes vs one size: what each new input shape costs on a GPU.

    python benchmarks/cam_shapes.py [--backbones resnet18,tf_efficientnet_lite0] [--images 16]

A held-out or real set (VOC) has images of many sizes, inferred one at a time (``data.eval_batch_size=1``), at
four scales + flip: nearly every forward meets an input shape it has not seen. For each backbone (random weights)
this times the CAM stage's inference (scales 1, 0.5, 1.5, 2 + flip) per image on ``--images`` sizes never timed
before (128-200 px a side), on one fixed size (160 x 160), and on the new sizes padded to a multiple of 32 (so
that shapes repeat), with ``torch.backends.cudnn.benchmark`` off (Lightning's default) and on, at fp32 and fp16
autocast. Prints markdown; the median skips the first 4 images. Runs on CPU too (fp32 only).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from isim.cam import multiscale_flip
from isim.models import Classifier
from isim.models.segmenter import pad_to_multiple

SCALES = (1.0, 0.5, 1.5, 2.0)


def new_sizes(rng: np.random.Generator, seen: set[tuple[int, int]], count: int) -> list[tuple[int, int]]:
    """``count`` (height, width) pairs in 128-200 px that no earlier timing used."""
    sizes: list[tuple[int, int]] = []
    while len(sizes) < count:
        size = (int(rng.integers(128, 201)), int(rng.integers(128, 201)))
        if size not in seen:
            seen.add(size)
            sizes.append(size)
    return sizes


@torch.no_grad()
def ms_per_image(net: Classifier, sizes: list[tuple[int, int]], pad: bool, dtype: torch.dtype | None) -> list[float]:
    device = next(net.parameters()).device
    times = []
    for height, width in sizes:
        image = torch.randn(1, 3, height, width, device=device)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            multiscale_flip(lambda batch: F.relu(net.cam(pad_to_multiple(batch, 32) if pad else batch)), image, SCALES)
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cases(device: torch.device) -> Iterator[tuple[bool, str, bool, torch.dtype | None]]:
    """(cudnn.benchmark, sizes, padded, autocast dtype) of each row; on CPU fp32 alone (fp16 there is emulated)."""
    for benchmark in (False, True):
        for dtype in (None, torch.float16) if device.type == "cuda" else (None,):
            yield benchmark, "fixed", False, dtype
            yield benchmark, "new", False, dtype
            yield benchmark, "new", True, dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default="resnet18,tf_efficientnet_lite0")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}\n")
    print("| backbone | cudnn.benchmark | precision | sizes | padded to 32 | median ms/img | mean ms/img |")
    print("|---|---|---|---|---|---|---|")
    rng, seen = np.random.default_rng(0), set()
    for backbone in args.backbones.split(","):
        net = Classifier(backbone, 21, pretrained=False).to(device).eval()
        for benchmark, kind, pad, dtype in cases(device):
            torch.backends.cudnn.benchmark = benchmark
            sizes = new_sizes(rng, seen, args.images) if kind == "new" else [(160, 160)] * args.images
            times = ms_per_image(net, sizes, pad, dtype)
            precision = "fp16 autocast" if dtype else "fp32"
            print(
                f"| {backbone} | {benchmark} | {precision} | {kind} | {pad} | {np.median(times[4:]):.1f} | "
                f"{np.mean(times):.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
