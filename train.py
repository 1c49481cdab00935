"""isim's entry point: ``python train.py stage=<cam|...> [overrides]``; see README.md and conf/."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from isim.errors import user_message
from isim.stages import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    try:
        run(cfg)
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        print(f"isim: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
