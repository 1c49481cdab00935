"""isim: the Iterative Self-Improved Model for weakly supervised semantic segmentation."""

__version__ = "0.1.0"
