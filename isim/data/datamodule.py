"""The LightningDataModule over a dataset directory: PASCAL VOC's layout (real VOC, SBD, the generated synthetic
sets), MS COCO 2014's (``data=coco14``) or a folder of images with CSV labels (``data=folder``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler

from isim.data.classes import IGNORE_INDEX, VOC_CLASSES
from isim.data.coco import CocoDataset, coco_classes, read_instances
from isim.data.dataset import LabelledImages
from isim.data.folder import FolderDataset, folder_classes, image_files, read_rows, split_csv
from isim.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from isim.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from isim.data.voc import VOCDataset, image_file, read_split
from isim.errors import IsimError


class TransformedDataset(Dataset):
    """A VOC split as tensors: {"name", "image", "labels", "mask"} (mask 255 where there is no GT).

    A ``tolerant`` dataset returns {"name", "error"} for an unreadable sample instead of raising. A random
    (training) transform is seeded per image: indexed by ``(index, seed)``, as ``EpochShuffle`` draws them.
    """

    def __init__(self, voc: LabelledImages, transform: A.Compose, tolerant: bool = False) -> None:
        self.voc, self.transform, self.tolerant = voc, transform, tolerant

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(index, tuple):  # (index, augmentation seed) from EpochShuffle
            index, seed = index
            self.transform.set_random_seed(seed)
        try:
            sample = self.voc[index]
        except IsimError as error:
            if not self.tolerant:
                raise
            return {"name": self.voc.names[index], "error": str(error)}
        mask = sample.mask if sample.mask is not None else np.full(sample.image.shape[:2], IGNORE_INDEX, np.uint8)
        out = self.transform(image=sample.image, mask=mask)
        return {
            "name": sample.name,
            "image": out["image"],
            "labels": torch.from_numpy(sample.labels),
            "mask": out["mask"].long(),
        }


class EpochShuffle(Sampler[tuple[int, int]]):
    """Each epoch's order of the images and each image's augmentation seed, drawn from (seed, epoch) when the
    epoch's pass starts: an epoch does not depend on the ones before it, so a run resumed from a checkpoint after
    a crash trains its remaining epochs exactly as the uninterrupted run did (generators seeded once per process
    would restart their streams at the resumed epoch)."""

    def __init__(self, size: int, seed: int, epoch: Callable[[], int]) -> None:
        self.size, self.seed, self.epoch = size, seed, epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch()])
        order, seeds = rng.permutation(self.size), rng.integers(2**32, size=self.size)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the readable samples; unreadable ones (tolerant datasets) go to batch["errors"] as (name, message)."""
    errors = [(item["name"], item["error"]) for item in items if "error" in item]
    items = [item for item in items if "error" not in item]
    shapes = {tuple(item["image"].shape) for item in items}
    if len(shapes) > 1:
        raise IsimError(f"images of different sizes {sorted(shapes)} in one batch; set data.eval_batch_size=1")
    return {**(torch.utils.data.default_collate(items) if items else {}), "errors": errors}


LAYOUTS = ("voc", "folder", "coco")


class WSSSDataModule(pl.LightningDataModule):
    """Train/val splits of a dataset with image-level labels and (optional) GT masks; ``classes`` (background
    first) is its class list, which every stage, metric, store and checkpoint takes from here."""

    def __init__(
        self,
        root: str,
        name: str = "voc12",
        layout: str = "voc",
        classes: Sequence[str] | None = None,
        train_split: str = "train",
        val_split: str = "val",
        mask_dir: str = "SegmentationClass",
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        crop_size: int = 512,
        resize_long: Sequence[int] = (320, 640),
        color_jitter: float = 0.3,
        mean: Sequence[float] | None = None,  # None: ImageNet's; the stages pass model.backbone's own
        std: Sequence[float] | None = None,
        synthetic: dict[str, int] | None = None,
        labels: str = "gt",
        seed: int = 0,  # the run's seed: each epoch's shuffle and augmentations are drawn from it and the epoch
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if layout not in LAYOUTS:
            raise IsimError(f"data.layout={layout!r} is unknown; use one of {', '.join(LAYOUTS)}")
        self.layout = layout
        self.name, self.train_split, self.val_split, self.mask_dir = name, train_split, val_split, mask_dir
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.seed = seed
        self.mean, self.std = tuple(mean or IMAGENET_MEAN), tuple(std or IMAGENET_STD)
        self.train_tf = train_transform(crop_size, resize_long, color_jitter, self.mean, self.std)
        self.eval_tf = eval_transform(self.mean, self.std)
        self.synthetic = SyntheticSpec(**synthetic) if synthetic is not None else None
        self.labels = labels  # training masks: "gt" (mask_dir) or a label-store directory
        if self.synthetic is None and not self.root.is_dir():
            raise IsimError(
                f"data.root={self.root} does not exist; set it to your VOCdevkit/VOC2012 directory (or your "
                "data=folder directory), or use the generated default with data=synthetic"
            )
        self._coco: dict[str, CocoDataset] = {}
        self.skipped: list[str] = []  # training images the label store lacks (its labels stage skipped them)
        self.classes = self._classes(classes)

    def _classes(self, foreground: Sequence[str] | None) -> tuple[str, ...]:
        if foreground is not None:
            return ("background", *foreground)
        if self.layout == "folder":
            return folder_classes(self.root, [self.train_split, self.val_split])
        if self.layout == "coco":
            return coco_classes(read_instances(self.root, self.val_split))
        return VOC_CLASSES

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            ensure_synthetic_voc(self.root, self.synthetic)
        if self.layout == "coco":  # GT masks rendered from the instances, once
            for split in (self.train_split, self.val_split):
                self._coco_split(split, render=True)

    def split(self, split: str, check_images: bool = True, mask_dir: str | None = None) -> LabelledImages:
        """The images, labels and masks (``mask_dir``, default data.mask_dir) of ``split``."""
        masks = mask_dir or self.mask_dir
        if self.layout == "folder":
            return FolderDataset(self.root, split, self.classes, masks, check_images)
        if self.layout == "coco":
            data = copy.copy(self._coco_split(split))
            data.mask_dir = Path(masks)
            return data
        return VOCDataset(self.root, split, masks, self.classes, check_images)

    def _coco_split(self, split: str, render: bool = False) -> CocoDataset:
        """A COCO split, its JSON parsed once per process (the train one is ~450 MB)."""
        if split not in self._coco or render:
            self._coco[split] = CocoDataset(self.root, split, self.mask_dir, render)
        return self._coco[split]

    @property
    def left_out(self) -> int:
        """Training images the layout leaves out (COCO's without any instance)."""
        return self._coco_split(self.train_split).left_out if self.layout == "coco" else 0

    def image_paths(self, split: str) -> dict[str, Path]:
        """Name -> image file of ``split``, read from its list alone: no annotations needed (VOC's test split)."""
        if self.layout == "coco":
            return dict(self._coco_split(split).files)
        if self.layout == "folder":
            return image_files(self.root, read_rows(split_csv(self.root, split)))
        return {name: image_file(self.root, name) for name in read_split(self.root, split)}

    def train_dataloader(self) -> DataLoader:
        masks = self.mask_dir if self.labels == "gt" else self.labels
        images = self.split(self.train_split, check_images=not self.skipped, mask_dir=masks)
        if self.skipped:
            skipped = set(self.skipped)
            images = images.subset([name for name in images.names if name not in skipped])
        data = TransformedDataset(images, self.train_tf)
        batch = self.per_device_batch_size(self.trainer.world_size if self.trainer is not None else 1)
        # Under DDP, Lightning gives each rank its share of this order (DistributedSamplerWrapper).
        order = EpochShuffle(len(data), self.seed, self._epoch_to_train)
        return self._loader(data, batch, shuffle=False, drop_last=len(data) >= batch, sampler=order)

    def _epoch_to_train(self) -> int:
        """The epoch the training data is drawn for: the epochs trained so far (a resumed run knows it once its
        checkpoint is restored, before ``trainer.current_epoch`` does)."""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def per_device_batch_size(self, world: int) -> int:
        """``batch_size`` is global: each of ``world`` processes loads its share, so adding devices keeps the
        optimisation the same."""
        if self.batch_size % world:
            raise IsimError(
                f"data.batch_size={self.batch_size} is the global batch and must divide by the "
                f"{world} training processes; use a multiple of {world}"
            )
        return self.batch_size // world

    def val_dataloader(self) -> DataLoader:
        data = TransformedDataset(self.split(self.val_split), self.eval_tf)
        if self.trainer is None or self.trainer.world_size == 1:
            return self._loader(data, self.eval_batch_size, shuffle=False)
        # Lightning's default DistributedSampler pads the split with repeated images, which the mIoU would count
        # twice; each rank takes its own share instead, unevenly if need be.
        shard = UnrepeatedDistributedSampler(data, self.trainer.world_size, self.trainer.global_rank, shuffle=False)
        return self._loader(data, self.eval_batch_size, shuffle=False, sampler=shard)

    def eval_dataloader(self, split: str | LabelledImages, tolerant: bool = False) -> DataLoader:
        """Un-augmented, full-size images of ``split`` (a name or a dataset), in list order."""
        data = self.split(split) if isinstance(split, str) else split
        return self._loader(TransformedDataset(data, self.eval_tf, tolerant), self.eval_batch_size, shuffle=False)

    def _loader(
        self, data: Dataset, batch_size: int, shuffle: bool, drop_last: bool = False, sampler: Sampler | None = None
    ) -> DataLoader:
        return DataLoader(
            data,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
