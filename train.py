"""isim's entry point: ``python train.py stage=<cam|...> [overrides]``; see README.md and conf/."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from isim.errors import exit_on_user_error
from isim.stages import run
from isim.stages.jobs import in_multirun
from isim.sweep import objective


def job(cfg: DictConfig) -> float | None:
    summary = run(cfg)
    # An hparams search (conf/hparams_search/) gets the figure it optimises; ranks > 0 have no summary.
    return objective(summary, cfg.optimized_metric) if cfg.optimized_metric and summary else None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return exit_on_user_error(lambda: job(cfg), keep_going=in_multirun())


if __name__ == "__main__":
    main()
