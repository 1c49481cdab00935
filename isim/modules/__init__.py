"""LightningModules: classifier training, CAM inference, segmenter training and prediction."""

from isim.modules.cam_inference import CAMInference
from isim.modules.classifier import ClassifierModule
from isim.modules.prediction import SegmenterPrediction
from isim.modules.segmenter import SegmenterModule

__all__ = ["CAMInference", "ClassifierModule", "SegmenterModule", "SegmenterPrediction"]
