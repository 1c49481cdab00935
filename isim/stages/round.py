"""``stage=round round=k``: one ISIM round. The segmenter trains on round k-1's labels (warm-started from
round k-1's weights), then its own scores, refined by the dense CRF, become round k's labels."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from isim.data.dataset import LabelledImages
from isim.errors import IsimError
from isim.pseudo_labels import LabelSettings, LabelStore, class_priors, settings_from_config
from isim.size_prior import Solver, background_bias_for_share, threshold_for_share
from isim.stages.common import build_datamodule, build_trainer, finish, timed, uses_gt
from isim.stages.fingerprint import determining
from isim.stages.labels import LabelJob, make_labels, sized_to_prior
from isim.stages.seg import train_segmenter

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    k = round_number(cfg)
    output_dir = Path(cfg.paths.output_dir)
    previous_store, warm_start = previous_round(cfg, k)
    datamodule = build_datamodule(cfg, labels=str(previous_store))
    datamodule.prepare_data()
    trainer = build_trainer(cfg, max_epochs=cfg.iterate.epochs_per_round, datamodule=datamodule)
    timings: dict[str, float] = {}
    with timed(timings, "train_s"):
        _, val = train_segmenter(cfg, datamodule, trainer, output_dir, warm_start)
    checkpoint = output_dir / "checkpoints" / "last.ckpt"
    if not checkpoint.is_file():
        raise IsimError(f"round {k} relabels from {checkpoint}, which was not written; keep callbacks=default")
    it = cfg.iterate
    data = datamodule.split(cfg.labels.split, check_images=cfg.labels.on_error == "raise")
    # Threshold 0.5 until round_settings: cam's is set there, seg and cam+seg label against their own background.
    job = LabelJob(checkpoint, settings_from_config(cfg.crf, 0.5, None), it.label_source, relabel_scales(cfg), it.flip)
    job = dataclasses.replace(job, offsets=logit_offsets(cfg, LabelStore(previous_store), data, k))
    store = LabelStore(output_dir / "store")
    with timed(timings, "sizing_s"):  # share: a sample's scores and ~12 CRF passes over it
        size = partial(sized_to_prior, cfg, datamodule, data, trainer, store=store, job=job)
        job = dataclasses.replace(job, settings=round_settings(cfg, job.settings, size))
    with timed(timings, "relabel_s"):
        result = make_labels(
            cfg,
            trainer,
            datamodule,
            data,
            job,
            store,
            cfg.labels.overwrite,
            previous=LabelStore(previous_store),
        )
    if not trainer.is_global_zero:
        return {}
    timings["total_s"] = round(time.perf_counter() - start, 2)
    summary = {
        "stage": "round",
        "name": cfg.name,
        "determined_by": determining(cfg, "round"),  # what iterate compares before reusing it
        "uses_gt": uses_gt(cfg),
        "round": k,
        "trained_on": str(previous_store),
        "warm_start": str(warm_start) if warm_start else None,
        "val": val,
        "trained_without": datamodule.skipped,  # images the previous labels skipped (labels.on_error=skip)
        "threshold": job.settings.threshold if job.source == "cam" else None,  # seg, cam+seg: their own background
        "background_bias": None if job.source == "cam" else job.settings.background_bias,
        "logit_offsets": list(job.offsets) if job.offsets else None,
        **result,
        "timings": {**result["timings"], **timings},
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    return finish(trainer, output_dir, summary)


def round_number(cfg: DictConfig) -> int:
    k = cfg.get("round")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise IsimError(f"round={k} must be a round number >= 1 (round 0 is stage=labels); e.g. stage=round round=1")
    return k


def relabel_scales(cfg: DictConfig) -> tuple[float, ...]:
    """``iterate.scales``; null: the CAM stage's (``cam.scales``) where the scores hold CAMs (cam, cam+seg), 1.0 for
    the softmax alone. CAMs come at the encoder's stride (16): on small images one scale gives maps too coarse to
    place objects, and round 0's labels were made at cam.scales; the decoder's softmax comes at stride 4."""
    scales = cfg.iterate.scales
    if scales is None:
        scales = cfg.cam.scales if "cam" in cfg.iterate.label_source else [1.0]
    return tuple(float(scale) for scale in scales)


def round_settings(cfg: DictConfig, settings: LabelSettings, size: Callable[[Solver], float]) -> LabelSettings:
    """How the round's scores become labels. label_source=cam: against ``iterate.threshold``, a number or ``share``
    (the CAM threshold at which the labels cover labels.foreground_share: ``size``, GT-free). seg, cam+seg: against
    their own background, under ``iterate.logit_adjustment=share`` raised by the bias at which they cover it
    (never lowered: ``background_bias_for_share``)."""
    it = cfg.iterate
    if it.label_source == "cam":
        if it.threshold == "share":
            threshold = size(threshold_for_share)
            log.info("CAM threshold %.4f: the round's labels cover labels.foreground_share of the sample", threshold)
            return dataclasses.replace(settings, threshold=threshold)
        if not isinstance(it.threshold, (int, float)) or not 0 < it.threshold < 1:
            raise IsimError(f"iterate.threshold={it.threshold} must be in (0, 1) or `share` (labels.foreground_share)")
        return dataclasses.replace(settings, threshold=float(it.threshold))
    if it.logit_adjustment == "share":
        bias = size(background_bias_for_share)
        log.info("background raised by %.3f nats: the round's labels cover at most labels.foreground_share", abs(bias))
        return dataclasses.replace(settings, background_bias=bias)
    return settings


PRIOR_FLOOR = 0.01


def logit_offsets(cfg: DictConfig, trained_on: LabelStore, data: LabelledImages, k: int) -> tuple[float, ...] | None:
    """What round k's relabelling subtracts from the segmenter's logits (``iterate.logit_adjustment``): tau x
    log(prior) per class, the prior being the labels the segmenter trained on (``class_priors``), undoing the
    background's majority (logit adjustment, Menon et al. 2021); after ``iterate.background_rounds`` rounds the
    classes' against each other only (``prior_offsets``). ``share`` is tau = 1 (the background is then sized by
    ``round_settings``). None where the scores are CAMs alone or tau is 0."""
    it = cfg.iterate
    adjustment = it.logit_adjustment
    if it.label_source == "cam":
        return None
    try:
        tau = 1.0 if adjustment == "share" else float(adjustment)
    except ValueError:
        raise IsimError(f"iterate.logit_adjustment={adjustment} must be a number (tau, e.g. 1.0) or `share`") from None
    if tau == 0:
        return None
    rounds = it.background_rounds
    if rounds is not None and (not isinstance(rounds, int) or rounds < 0):
        raise IsimError(f"iterate.background_rounds={rounds} must be a number of rounds (e.g. 1) or null (every round)")
    background = rounds is None or k <= rounds
    return prior_offsets(trained_on, data, tau, background)


def prior_offsets(trained_on: LabelStore, data: LabelledImages, tau: float, background: bool) -> tuple[float, ...]:
    """tau x log(prior) per class (background first), the prior being the class's pixel share in the labels.
    ``background`` False: the classes' offsets centred on their mean over the classes the images have, the
    background's 0: the classes balanced against each other, foreground against background the segmenter's own
    call (its labels already cover the objects; the background's offset would push them further every round)."""
    priors = class_priors(trained_on, data.names, data.labels)
    # A class its labels never gave a pixel is no prior to divide out: without a floor it would gain ~14 nats.
    offsets = tau * np.log(np.maximum(priors, PRIOR_FLOOR))
    if not background:
        present = np.flatnonzero(np.any(data.labels, axis=0)) + 1
        offsets[present] -= offsets[present].mean()
        offsets[0] = 0.0
    return tuple(round(float(offset), 6) for offset in offsets)


def previous_round(cfg: DictConfig, k: int) -> tuple[Path, str | Path | None]:
    """Round k-1's label store and the checkpoint round k starts from. Round 0 is ``data.labels`` (the labels
    stage's store) and ``iterate.init`` (the CAM classifier); a round counts once complete (summary.json last)."""
    if k == 1:
        if cfg.data.labels == "gt":
            raise IsimError("round 1 trains on pseudo-labels, not data.labels=gt; use stage=seg for the GT reference")
        return Path(cfg.data.labels), cfg.iterate.init
    previous_dir = Path(cfg.paths.experiment_dir) / f"round-{k - 1}"
    if not (previous_dir / "summary.json").is_file():
        raise IsimError(
            f"round {k} needs round {k - 1}, which has not completed (no {previous_dir}/summary.json); "
            f"run `python train.py stage=round round={k - 1}` or stage=iterate first"
        )
    return previous_dir / "store", previous_dir / "checkpoints" / "last.ckpt"
