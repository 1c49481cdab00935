"""Datasets in the PASCAL VOC layout, the synthetic generator and the LightningDataModule."""

from isim.data.classes import IGNORE_INDEX, VOC_CLASSES, voc_palette
from isim.data.datamodule import WSSSDataModule
from isim.data.synthetic import SyntheticSpec, ensure_synthetic_voc
from isim.data.voc import VOCDataset

__all__ = [
    "IGNORE_INDEX",
    "VOC_CLASSES",
    "SyntheticSpec",
    "VOCDataset",
    "WSSSDataModule",
    "ensure_synthetic_voc",
    "voc_palette",
]
