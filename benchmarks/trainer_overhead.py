"""What the Lightning Trainer costs: the segmenter trained by the configured Trainer vs a hand-written
PyTorch loop over the same model, batch, data loader and optimizer, in the same process.

    python benchmarks/trainer_overhead.py [--epochs 3] [--repeats 2]

Epochs after the first are timed (the first warms up allocators and loader workers); the two loops
alternate ``--repeats`` times so drifts of the machine hit both. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from isim.data import VOC_CLASSES, WSSSDataModule
from isim.modules.segmenter import SegmenterModule, joint_loss
from isim.optim import sgd_poly
from isim.stages.common import build_datamodule, build_trainer

ROOT = Path(__file__).resolve().parents[1]


class EpochTimer(pl.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self.start)


def with_trainer(cfg, datamodule: WSSSDataModule, epochs: int) -> list[float]:
    module: SegmenterModule = instantiate(cfg.model.segmenter, classes=list(VOC_CLASSES))
    trainer = build_trainer(cfg, max_epochs=epochs, datamodule=datamodule)
    timer = EpochTimer()
    trainer.callbacks.append(timer)
    trainer.fit(module, datamodule=datamodule)
    return timer.seconds


def by_hand(cfg, datamodule: WSSSDataModule, epochs: int) -> list[float]:
    module: SegmenterModule = instantiate(cfg.model.segmenter, classes=list(VOC_CLASSES))
    hp, net = module.hparams, module.net.train()
    loader = datamodule.train_dataloader()
    config = sgd_poly(
        module.lr_groups(),
        hp.lr,
        hp.momentum,
        hp.weight_decay,
        epochs * len(loader),
        hp.poly_power,
    )
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            masks, class_logits = net(batch["image"])
            loss, _ = joint_loss(masks, class_logits, batch["labels"], batch["mask"], hp.seg_weight, hp.cls_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    overrides = [
        "data.labels=gt",
        "+trainer.limit_val_batches=0",
        "callbacks=none",
        "logger=csv",
        "trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
    output = Path("runs/benchmarks/trainer_overhead").resolve()
    with open_dict(cfg):
        cfg.paths.root_dir, cfg.paths.output_dir = str(Path.cwd()), str(output)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    images = len(datamodule.split(datamodule.train_split)) // cfg.data.batch_size * cfg.data.batch_size
    results: dict[str, list[float]] = {"hand-written loop": [], "Lightning Trainer": []}
    for _ in range(args.repeats):
        for name, loop in (("hand-written loop", by_hand), ("Lightning Trainer", with_trainer)):
            torch.manual_seed(0)
            results[name] += [images / seconds for seconds in loop(cfg, datamodule, args.epochs)[1:]]
    hand = statistics.median(results["hand-written loop"])
    print(
        f"\nsegmenter ({cfg.model.backbone}, {cfg.model.decoder}), {images} images/epoch, batch "
        f"{cfg.data.batch_size}, crop {cfg.data.crop_size}, torch {torch.get_num_threads()} threads; median of "
        f"{len(results['hand-written loop'])} epochs each\n"
    )
    print("| loop | images/s | vs hand-written |")
    print("|---|---|---|")
    for name, rates in results.items():
        print(f"| {name} | {statistics.median(rates):.2f} | {statistics.median(rates) / hand:.3f} |")


if __name__ == "__main__":
    main()
