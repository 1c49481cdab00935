"""isim: the Iterative Self-Improved Model for weakly supervised semantic segmentation."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# ${isim.if:<flag>,<then>,<else>} in conf/ (e.g. stage=cam's run dir: cam, or cam-eval when it only scores a checkpoint)
OmegaConf.register_new_resolver("isim.if", lambda flag, then, otherwise: then if flag else otherwise, replace=True)
