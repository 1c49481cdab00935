"""Every option of every config group composes, and the objects it names can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from isim.data import WSSSDataModule
from isim.modules import ClassifierModule
from isim.stages.common import build_trainer
from tests.conftest import ROOT, compose_config

GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "hydra")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group: str, option: str) -> None:
    cfg = compose_config(f"{group}={option}")
    assert cfg.hydra.runtime.choices[group] == option
    assert cfg.name and cfg.stage.name and cfg.model.backbone


def test_default_is_the_synthetic_cpu_experiment(tmp_path: Path) -> None:
    cfg = compose_config(output_dir=tmp_path)
    assert cfg.data.name == "synthetic" and cfg.model.pretrained is False
    assert cfg.trainer.accelerator == "cpu" and cfg.logger.offline is True
    assert cfg.stage.name == "iterate" and cfg.hydra.run.dir.endswith("runs/synthetic/iterate")
    assert compose_config("stage=round", "round=3").hydra.run.dir.endswith("runs/synthetic/round-3")


def test_real_voc_defaults_to_pretrained_resnet50_recipe() -> None:
    cfg = compose_config("experiment=voc12_resnet50")
    assert cfg.data.name == "voc12" and cfg.model.pretrained is True and cfg.model.backbone == "resnet50"
    assert cfg.cam.scales == [1.0, 0.5, 1.5, 2.0]


def test_config_objects_instantiate(tmp_path: Path, tiny_voc: Path) -> None:
    cfg = compose_config(f"data.root={tiny_voc}", output_dir=tmp_path)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model.classifier, num_classes=20)
    assert isinstance(data, WSSSDataModule) and isinstance(model, ClassifierModule)
    assert model.hparams.backbone == "resnet18" and model.hparams.output_stride == 16
    trainer = build_trainer(compose_config("logger=none", output_dir=tmp_path), max_epochs=3)
    assert isinstance(trainer, pl.Trainer) and trainer.max_epochs == 3 and trainer.logger is None
