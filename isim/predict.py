"""Segmenting new images with a trained segmenter: multi-scale + flip TTA, optional CRF, PNG masks out."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from isim.cam import multiscale_flip
from isim.crf import crf_scores
from isim.data import IGNORE_INDEX, VOC_CLASSES, VOCDataset, voc_palette
from isim.data.datamodule import collate
from isim.data.transforms import eval_transform
from isim.data.voc import open_image
from isim.errors import IsimError
from isim.io import write_json, write_png
from isim.metrics import confusion_matrix, segmentation_report
from isim.models.segmenter import Segmenter
from isim.modules.checkpoint import load_network
from isim.visualize import blend, colorize

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


class InferenceImages(Dataset):
    """Images to segment: {"name", "image", "raw", "mask"} (mask all 255 without GT)."""

    def __init__(self, paths: list[Path], masks: list[Path | None], mean: list[float], std: list[float]) -> None:
        self.paths, self.masks, self.transform = paths, masks, eval_transform(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = np.array(open_image(self.paths[index]).convert("RGB"))
        mask_path = self.masks[index]
        mask = np.array(open_image(mask_path)) if mask_path else np.full(raw.shape[:2], IGNORE_INDEX, np.uint8)
        return {"name": self.paths[index].stem, "image": self.transform(image=raw)["image"],
                "raw": torch.from_numpy(raw), "mask": torch.from_numpy(mask).long()}  # fmt: skip


def inputs(cfg: DictConfig) -> tuple[list[Path], list[Path | None]]:
    """Image paths (and GT masks where known) from a folder, a .txt list of paths, or a VOC split."""
    if cfg.input is None:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        data = VOCDataset(datamodule.root, cfg.split, datamodule.mask_dir)
        masks = [data.mask_dir / f"{name}.png" for name in data.names]
        return [data.root / "JPEGImages" / f"{n}.jpg" for n in data.names], [m if m.is_file() else None for m in masks]
    source = Path(cfg.input)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix == ".txt" and source.is_file():
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    else:
        raise IsimError(f"input={source} is neither a folder of images nor a .txt list of image paths")
    if not paths:
        raise IsimError(f"input={source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, [None] * len(paths)


def load_segmenter(path: Path) -> Segmenter:
    if not path.is_file():
        raise IsimError(f"ckpt_path={path} not found; train one with `python train.py stage=seg` or give a path")
    net = load_network(path)
    if not isinstance(net, Segmenter):
        raise IsimError(f"{path} is not a segmenter checkpoint (it holds a {type(net).__name__}); use a stage=seg one")
    return net


@torch.no_grad()
def predict(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    paths, masks = inputs(cfg)  # checked before the (slower) model load
    net = load_segmenter(Path(cfg.ckpt_path))
    device = torch.device(cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    net.to(device)
    loader = DataLoader(InferenceImages(paths, masks, cfg.data.mean, cfg.data.std), batch_size=cfg.batch_size,
                        num_workers=cfg.data.num_workers, collate_fn=collate)  # fmt: skip
    confusion = torch.zeros(len(VOC_CLASSES), len(VOC_CLASSES), dtype=torch.long)
    palette = voc_palette()
    for batch in tqdm(loader, desc="segmenting", unit="batch"):
        probs = multiscale_flip(lambda x: net(x)[0].softmax(1), batch["image"].to(device), cfg.scales, cfg.flip)
        for name, prob, raw, mask in zip(batch["name"], probs.cpu().numpy(), batch["raw"].numpy(), batch["mask"],
                                         strict=True):  # fmt: skip
            if cfg.postprocess_crf:
                pred = crf_scores(raw, prob / prob.sum(0), cfg.crf.gaussian, cfg.crf.bilateral, cfg.crf.iterations)
            else:
                pred = prob.argmax(0).astype(np.uint8)
            write_png(output_dir / "masks" / f"{name}.png", pred, palette)
            if cfg.overlays:
                write_png(output_dir / "overlays" / f"{name}.png", blend(raw, colorize(pred)))
            confusion += confusion_matrix(torch.from_numpy(pred), mask, len(VOC_CLASSES))
    summary = {"stage": "infer", "checkpoint": str(cfg.ckpt_path), "images": len(paths),
               "masks_dir": str(output_dir / "masks"), "scales": list(cfg.scales), "flip": cfg.flip,
               "crf": cfg.postprocess_crf, "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip
    if confusion.sum() > 0:
        summary["eval"] = segmentation_report(confusion, VOC_CLASSES)
        log.info("mIoU %.4f over %d images", summary["eval"]["miou"], len(paths))
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_json(output_dir / "summary.json", summary)
    log.info("wrote %d masks to %s", len(paths), output_dir / "masks")
    return summary
