"""Segment images with a trained segmenter: ``python infer.py input=<folder|list.txt> [overrides]``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from isim.errors import exit_on_user_error
from isim.predict import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(lambda: predict(cfg))


if __name__ == "__main__":
    main()
