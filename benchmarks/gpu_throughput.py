"""Training and CAM-inference throughput per precision: what `trainer=gpu` (16-mixed) buys over fp32.

    python benchmarks/gpu_throughput.py [--backbones resnet50,resnet101] [--crop 512] [--batch 16]

For each backbone: the segmenter (DeepLabV3+ with the classification head, ISIM's joint loss on random
pseudo-labels) and the CAM classifier, one SGD step per batch, images/s and peak GPU memory at fp32
(`precision=32-true`), bf16 autocast (`bf16-mixed`) and fp16 autocast with a gradient scaler (`16-mixed`,
the `trainer=gpu` preset); then multi-scale + flip CAM inference (scales 1, 0.5, 1.5, 2) in images/s.
Random weights (nothing is downloaded); the step costs the same as with ImageNet weights. Timed steps follow
`--warmup` untimed ones and are synchronised. Runs on CPU too (slowly: use a small --crop). Prints markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import torch
from torch import nn

from isim.cam import multiscale_cams
from isim.models import Classifier
from isim.models.segmenter import Segmenter
from isim.modules.segmenter import joint_loss

PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
CLASSES = 20


def train_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if isinstance(net, Segmenter):
        masks, class_logits = net(images)
        return joint_loss(masks, class_logits, labels, targets)[0]
    return nn.functional.multilabel_soft_margin_loss(net(images), labels)


def timed(step: Callable[[], None], device: torch.device, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_rate(
    net: nn.Module, precision: str, args: argparse.Namespace, device: torch.device
) -> tuple[float, float]:
    """Images/s of one SGD step per batch, and the peak GPU memory in GiB (0 on CPU)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.crop, args.crop, generator=generator).to(device)
    labels = (torch.rand(args.batch, CLASSES, generator=generator) < 0.15).float().to(device)
    targets = torch.randint(0, CLASSES + 1, (args.batch, args.crop, args.crop), generator=generator).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    dtype = PRECISIONS[precision]
    scaler = torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = train_step(net, images, labels, targets)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, args.warmup, args.steps)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return args.batch / seconds, peak


def cam_rate(net: Classifier, precision: str, args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of multi-scale + flip CAMs, one image per call as the CAM stage on VOC's mixed sizes does."""
    image = torch.randn(1, 3, args.crop, args.crop).to(device)
    dtype = PRECISIONS[precision]
    autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    net.eval()

    def step() -> None:
        with autocast:
            multiscale_cams(net, image)

    return 1 / timed(step, device, args.warmup, args.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default="resnet50,resnet101")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"\n{name}, torch {torch.__version__}; crop {args.crop}, batch {args.batch}, {args.steps} timed steps\n")
    print("| backbone | precision | segmenter train img/s | peak GiB | classifier train img/s | peak GiB | CAM img/s |")
    print("|---|---|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        for precision in args.precisions.split(","):
            segmenter = Segmenter(backbone, 1 + CLASSES, pretrained=False).to(device).train()
            seg, seg_peak = training_rate(segmenter, precision, args, device)
            del segmenter
            classifier = Classifier(backbone, CLASSES, pretrained=False).to(device).train()
            cls, cls_peak = training_rate(classifier, precision, args, device)
            cams = cam_rate(classifier, precision, args, device)
            del classifier
            print(
                f"| {backbone} | {precision} | {seg:.1f} | {seg_peak:.1f} | {cls:.1f} | {cls_peak:.1f} | {cams:.1f} |"
            )


if __name__ == "__main__":
    main()
