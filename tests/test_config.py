"""Every option of every config group composes, and the objects it names can be built."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
from hydra.utils import instantiate

from isim.data import VOC_CLASSES, WSSSDataModule
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
    sized = (cfg.labels.threshold, cfg.iterate.threshold, cfg.iterate.logit_adjustment)
    assert sized == ("share", "share", "share") and cfg.labels.foreground_share == 0.19


SEED_RUNS = {  # scripts/experiments.sh of cenkbircanoglu/isim: backbone, batch, frozen BatchNorm
    "voc12_resnet50": ("resnet50", 48, True),
    "voc12_resnet101": ("resnet101", 32, True),
    "voc12_resnest200": ("resnest200e", 16, False),
}


@pytest.mark.parametrize("preset", sorted(SEED_RUNS))
def test_voc_presets_are_the_reference_schedule(preset: str) -> None:
    cfg = compose_config(f"experiment={preset}")
    backbone, batch, freeze_bn = SEED_RUNS[preset]
    assert cfg.data.name == "voc12" and cfg.data.train_split == "train_aug" and cfg.labels.split == "train_aug"
    assert cfg.data.batch_size == batch and cfg.data.crop_size == 512 and cfg.data.mask_dir == "SegmentationClassAug"
    assert cfg.model.backbone == backbone and cfg.model.pretrained is True and cfg.model.output_stride == 16
    assert cfg.model.segmenter.freeze_bn is freeze_bn and cfg.model.classifier.freeze_bn is freeze_bn
    assert list(cfg.model.segmenter.decoder_args.decoder_atrous_rates) == [6, 12, 18]
    classifier, segmenter = cfg.model.classifier, cfg.model.segmenter
    assert (classifier.lr, classifier.head_lr_mult, classifier.momentum, classifier.weight_decay) == (
        0.1,
        10,
        1e-4,
        1e-4,
    )
    assert cfg.cam.max_epochs == 5 and classifier.poly_power == 0.9
    # The segmenter trains at the floor the seed's poly decay reaches after 5 epochs of its batch size.
    floor = 0.1 * (1 / (5 * (10582 // batch))) ** 0.9
    assert segmenter.lr == pytest.approx(floor, rel=0.02) and segmenter.poly_power == 0
    assert (segmenter.decoder_lr_mult, segmenter.head_lr_mult, segmenter.momentum) == (1, 10, 1e-4)
    it = cfg.iterate
    assert (it.rounds, it.epochs_per_round, it.label_source, it.threshold) == (10, 25, "cam", 0.3)
    assert list(it.scales) == [1.0, 0.5, 1.5, 2.0] and it.flip is True and cfg.labels.threshold == 0.3
    assert cfg.crf.gt_prob == 0.7 and cfg.crf.iterations == 10 and cfg.crf.bilateral.srgb == 5


def test_config_objects_instantiate(tmp_path: Path, tiny_voc: Path) -> None:
    cfg = compose_config(f"data.root={tiny_voc}", output_dir=tmp_path)
    data = instantiate(cfg.data)
    model = instantiate(cfg.model.classifier, classes=list(VOC_CLASSES))
    assert isinstance(data, WSSSDataModule) and isinstance(model, ClassifierModule)
    assert model.hparams.backbone == "resnet18" and model.hparams.output_stride == 16
    trainer = build_trainer(compose_config("logger=none", output_dir=tmp_path), max_epochs=3)
    assert isinstance(trainer, pl.Trainer) and trainer.max_epochs == 3 and trainer.logger is None
