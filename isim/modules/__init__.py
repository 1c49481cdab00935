"""LightningModules: classifier training, CAM inference and segmenter training."""

from isim.modules.cam_inference import CAMInference
from isim.modules.classifier import ClassifierModule
from isim.modules.segmenter import SegmenterModule

__all__ = ["CAMInference", "ClassifierModule", "SegmenterModule"]
