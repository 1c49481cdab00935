"""LightningModules: classifier training and CAM inference."""

from isim.modules.cam_inference import CAMInference
from isim.modules.classifier import ClassifierModule

__all__ = ["CAMInference", "ClassifierModule"]
