"""``python infer.py``: a trained segmenter over a folder, a list or a VOC split; PNG masks out, mIoU with GT."""

from __future__ import annotations

import logging
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from isim.crf import check_backend
from isim.data import IGNORE_INDEX
from isim.data.datamodule import collate
from isim.data.dataset import open_image
from isim.data.transforms import eval_transform, input_normalization
from isim.errors import IsimError
from isim.io import atomic_path, write_json
from isim.metrics import segmentation_report
from isim.models.segmenter import Segmenter
from isim.modules import SegmenterPrediction
from isim.modules.checkpoint import check_classes, load_module
from isim.stages.common import build_trainer
from isim.stages.jobs import quiet_secondary_ranks

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
# Where the masks go, by `format`: isim's own folder, or the PASCAL VOC evaluation server's layout for methods
# trained with data beyond VOC's (comp6), which is then archived for upload.
MASK_DIRS = {"masks": "masks", "voc_server": "results/VOC2012/Segmentation/comp6_test_cls"}


class InferenceImages(Dataset):
    """Images to segment: {"name", "image", "raw", "mask"} (mask all 255 without GT)."""

    def __init__(
        self, paths: list[Path], masks: list[Path | None], mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.paths, self.masks, self.transform = paths, masks, eval_transform(mean, std)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = np.array(open_image(self.paths[index]).convert("RGB"))
        mask_path = self.masks[index]
        mask = np.array(open_image(mask_path)) if mask_path else np.full(raw.shape[:2], IGNORE_INDEX, np.uint8)
        return {
            "name": self.paths[index].stem,
            "image": self.transform(image=raw)["image"],
            "raw": torch.from_numpy(raw),
            "mask": torch.from_numpy(mask).long(),
        }


def inputs(cfg: DictConfig) -> tuple[list[Path], list[Path | None], tuple[str, ...] | None]:
    """Image paths (and GT masks where known) from a folder, a .txt list of paths, or a split of the data (then
    also the data's class list)."""
    if cfg.input is None:
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        images = datamodule.image_paths(cfg.split)  # a split without annotations (VOC's test) works
        paths = list(images.values())
        missing = [path for path in paths if not path.is_file()]
        if missing:
            raise IsimError(f"{len(missing)} image(s) of split={cfg.split} are missing, e.g. {missing[0]}")
        masks = [datamodule.root / datamodule.mask_dir / f"{name}.png" for name in images]
        return paths, [mask if mask.is_file() else None for mask in masks], datamodule.classes
    source = Path(cfg.input)
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    elif source.suffix == ".txt" and source.is_file():
        paths = [Path(line.strip()) for line in source.read_text().splitlines() if line.strip()]
    else:
        raise IsimError(f"input={source} is neither a folder of images nor a .txt list of image paths")
    if not paths:
        raise IsimError(f"input={source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, [None] * len(paths), None


def load_segmenter(path: Path, classes: tuple[str, ...] | None) -> tuple[Segmenter, tuple[str, ...]]:
    """The segmenter of ``path`` and the classes it segments into; refused if ``classes`` (the data's) differ."""
    if not path.is_file():
        raise IsimError(f"ckpt_path={path} not found; train one with `python train.py stage=seg` or give a path")
    module = load_module(path)
    if not isinstance(module.net, Segmenter):
        raise IsimError(
            f"{path} is not a segmenter checkpoint (it holds a {type(module.net).__name__}); use a stage=seg one"
        )
    if classes is not None:
        check_classes(path, module.hparams.classes, classes)
    return module.net, tuple(module.hparams.classes)


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Segment the input with the configured Trainer (its images sharded over DDP ranks); rank 0 writes the
    summary."""
    quiet_secondary_ranks()
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    if cfg.format not in MASK_DIRS:
        raise IsimError(f"format={cfg.format!r} is unknown; use one of {', '.join(MASK_DIRS)}")
    paths, masks, data_classes = inputs(cfg)  # checked before the (slower) model load
    crf = cfg.crf if cfg.postprocess_crf else None
    if crf is not None:
        check_backend(crf.backend)
    net, classes = load_segmenter(Path(cfg.ckpt_path), data_classes)
    masks_dir = output_dir / MASK_DIRS[cfg.format]
    overlay_dir = output_dir / "overlays" if cfg.overlays else None
    prediction = SegmenterPrediction(net, len(classes), cfg.scales, cfg.flip, masks_dir, crf, overlay_dir)
    mean, std = input_normalization(cfg.data.mean, cfg.data.std, net.backbone_name)
    loader = DataLoader(
        InferenceImages(paths, masks, mean, std),
        batch_size=cfg.batch_size,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
    )
    trainer = build_trainer(cfg, max_epochs=1)
    trainer.predict(prediction, dataloaders=loader, return_predictions=False)
    confusion = prediction.confusion.compute().cpu()  # a collective: every rank's images
    if not trainer.is_global_zero:
        return {}
    seconds = time.perf_counter() - start
    summary = {
        "stage": "infer",
        "checkpoint": str(cfg.ckpt_path),
        "images": len(paths),
        "masks_dir": str(masks_dir),
        "scales": list(cfg.scales),
        "flip": cfg.flip,
        "crf": cfg.postprocess_crf,
        "processes": trainer.world_size,
        "seconds": round(seconds, 2),
        "images_per_s": round(len(paths) / seconds, 2),
    }
    if confusion.sum() > 0:
        summary["eval"] = segmentation_report(confusion, classes)
        log.info("mIoU %.4f over %d images", summary["eval"]["miou"], len(paths))
    log.info("wrote %d masks to %s", len(paths), masks_dir)
    if cfg.format == "voc_server":
        summary["archive"] = str(server_archive(output_dir))
        log.info("to upload to the VOC evaluation server: %s", summary["archive"])
    summary["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_json(output_dir / "summary.json", summary)
    return summary


def server_archive(output_dir: Path) -> Path:
    """``results.tar.gz`` holding ``results/``, as the VOC evaluation server takes an upload."""
    archive = output_dir / "results.tar.gz"
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz") as tar:
        tar.add(output_dir / "results", arcname="results")
    return archive
