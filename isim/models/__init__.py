"""Networks: timm backbones by name and the CAM classifier."""

from isim.models.backbone import check_backbone, create_backbone
from isim.models.classifier import Classifier

__all__ = ["Classifier", "check_backbone", "create_backbone"]
