"""ISIM's rounds for real: ``stage=iterate`` runs each round as its own Hydra job, grouped on W&B,
resumable after the last completed round; ``stage=round`` alone, warm starts, refusals."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf
from PIL import Image

from isim.data import VOC_CLASSES
from isim.errors import IsimError
from isim.modules import SegmenterModule
from isim.pseudo_labels import LabelStore
from isim.stages.iterate import sized
from isim.stages.round import logit_offsets, relabel_scales
from isim.stages.seg import load_weights
from tests.conftest import ROUNDS, TINY, compose_config, kill_when, read_summary, run_train
from tests.test_pseudo_labels import two_image_store
from tests.test_stage_labels import pixel_agreement, store_arrays, store_share
from tests.wandb_offline import offline_runs

ITERATE = [*ROUNDS, "stage=iterate", "iterate.rounds=2", "logger=wandb"]


def round_table(experiment: Path) -> list[tuple[float | None, float | None]]:
    """(label mIoU, val mIoU) of every round, from ``stage=iterate``'s summary."""
    return [(row["label_miou"], row["val_miou"]) for row in read_summary(experiment / "iterate")["rounds"]]


def copy_labelled(project: Path, root: Path) -> None:
    """The tiny project's data, trained classifier and round-0 store, copied into ``root``."""
    shutil.copytree(project / "data", root / "data")
    for stage in ("cam", "labels"):
        shutil.copytree(project / "runs/tiny" / stage, root / "runs/tiny" / stage)


@pytest.fixture(scope="module")
def chain(labelled_project: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A copy of the tiny project (trained classifier, round-0 store) after a 2-round ``stage=iterate``."""
    root = tmp_path_factory.mktemp("chain")
    copy_labelled(labelled_project, root)
    return root, run_train(root, *ITERATE).stdout


def test_a_round_with_the_torch_crf_relabels_as_pydensecrf_does(chain: tuple[Path, str]) -> None:
    """Round 1 again with crf.backend=torch: the same segmenter (same seed), and its relabelling agrees with the
    pydensecrf round's store."""
    root, _ = chain
    run_train(root, *ROUNDS, "stage=round", "round=1", "crf.backend=torch", "hydra.run.dir=runs/tiny/round-1-torch")
    reference, ours = read_summary(root / "runs/tiny/round-1"), read_summary(root / "runs/tiny/round-1-torch")
    assert LabelStore(root / "runs/tiny/round-1-torch/store").manifest()["producer"]["settings"]["backend"] == "torch"
    assert ours["val"] == reference["val"]
    stores = [store_arrays(root / f"runs/tiny/{run}/store") for run in ("round-1", "round-1-torch")]
    assert pixel_agreement(*stores) >= 0.995
    assert abs(ours["labels"]["miou"] - reference["labels"]["miou"]) <= 0.002


def test_a_round_sized_to_the_prior_shrinks_the_balanced_labels(chain: tuple[Path, str]) -> None:
    """``iterate.logit_adjustment=share``: tau = 1's offsets, and the background raised by the bias at which round
    1's labels cover labels.foreground_share of the train pixels (all 24 images are the sample), from the
    segmenter's softmax and from cam+seg's mean scores alike; a prior above tau = 1's labels leaves them as they are."""
    root, _ = chain

    def round_1(run: str, source: str, adjustment: str, prior: float) -> tuple[dict, float]:
        modes = [f"iterate.label_source={source}", f"iterate.logit_adjustment={adjustment}"]
        directory = f"runs/tiny/round-1-{run}"
        prior_at = [f"labels.foreground_share={prior}", f"hydra.run.dir={directory}"]
        run_train(root, *ROUNDS, "stage=round", "round=1", *modes, *prior_at)
        return read_summary(root / directory), store_share(root / directory / "store")

    offsets = []
    for source in ("seg", "cam+seg"):
        balanced, own = round_1(f"{source}-tau1", source, "1.0", 0.3)
        assert balanced["background_bias"] == 0 and own > 0.02, own
        shrunk, share = round_1(f"{source}-half", source, "share", round(own / 2, 4))
        assert shrunk["logit_offsets"] == balanced["logit_offsets"] and shrunk["background_bias"] < -0.01
        assert share == pytest.approx(own / 2, abs=0.02)
        kept, same = round_1(f"{source}-above", source, "share", min(1.5 * own, 0.9))
        assert kept["background_bias"] == 0 and same == own
        offsets.append(shrunk["logit_offsets"])
    assert offsets[0] == offsets[1]  # seg and cam+seg divide out the same tau = 1 prior


@pytest.mark.parametrize(("k", "background_rounds", "background"), [(1, 1, True), (2, 1, False), (3, None, True)])
def test_after_the_background_rounds_only_the_classes_are_balanced(
    tmp_path: Path, k: int, background_rounds: int | None, background: bool
) -> None:
    """Round k's offsets: tau x log(prior) for background and classes in the first ``iterate.background_rounds``
    rounds; later the background's offset is 0 and the classes' are centred on their mean, so relabelling keeps
    the segmenter's own foreground/background call and only evens the classes out."""
    store, labels = two_image_store(tmp_path)
    data = SimpleNamespace(names=["a", "b"], labels=list(labels))  # what the offsets read of a split
    it = {"label_source": "seg", "logit_adjustment": 0.5, "background_rounds": background_rounds}
    offsets = np.array(logit_offsets(OmegaConf.create({"iterate": it}), store, data, k))
    priors = np.array([75 / 190, 70 / 190, 45 / 90])  # background, class 3, class 5
    expected = 0.5 * np.log(priors)
    if not background:
        expected = np.concatenate([[0], expected[1:] - expected[1:].mean()])
    assert offsets[[0, 3, 5]] == pytest.approx(expected, abs=1e-6)
    assert offsets[1] == 0  # a class no image has: prior 1, offset 0 whichever the round


def test_a_cam_round_sized_to_the_prior_finds_its_threshold(chain: tuple[Path, str]) -> None:
    """``iterate.threshold=share`` with label_source=cam: the CAM threshold at which round 1's labels cover
    labels.foreground_share, in place of the fixed one (0.2 here)."""
    root, _ = chain
    sized = ["iterate.label_source=cam", "iterate.threshold=share", "labels.foreground_share=0.3"]
    run_train(root, *ROUNDS, "stage=round", "round=1", *sized, "hydra.run.dir=runs/tiny/round-1-cam-share")
    summary = read_summary(root / "runs/tiny/round-1-cam-share")
    assert 0 < summary["threshold"] < 1 and summary["threshold"] != 0.2 and summary["logit_offsets"] is None
    assert store_share(root / "runs/tiny/round-1-cam-share/store") == pytest.approx(0.3, abs=0.02)
    scores = LabelStore(root / "runs/tiny/round-1-cam-share/store").manifest()["producer"]["scores"]
    assert scores["scales"] == [1.0, 0.5]  # iterate.scales=null: the CAMs at cam.scales, as round 0's


@pytest.mark.parametrize(
    ("source", "scales", "expected"),
    [("seg", None, (1.0,)), ("cam", None, (1.0, 0.5)), ("cam+seg", None, (1.0, 0.5)), ("cam", [2.0], (2.0,))],
)
def test_relabelling_scales_follow_the_cam_stage_where_the_scores_hold_cams(
    source: str, scales: list[float] | None, expected: tuple[float, ...]
) -> None:
    cfg = compose_config(*TINY, f"iterate.label_source={source}", f"iterate.scales={scales or 'null'}")
    assert relabel_scales(cfg) == expected


def test_a_sized_run_without_a_prior_is_refused_before_training(tmp_path: Path) -> None:
    no_prior = ["stage=iterate", "labels.threshold=share", "labels.foreground_share=null"]
    refused = run_train(tmp_path, *TINY, "name=tiny", *no_prior, check=False)
    assert refused.returncode == 2 and "labels.foreground_share=None must be in (0, 1)" in refused.stderr
    assert not (tmp_path / "runs/tiny/cam").exists()


@pytest.mark.parametrize(
    ("source", "threshold", "adjustment", "needs_prior"),
    [
        ("seg", "share", 1.0, False),
        ("seg", 0.3, "share", True),
        ("cam", "share", 1.0, True),
        ("cam", 0.3, "share", False),
    ],
)
def test_a_prior_is_needed_only_where_the_source_reads_a_share_mode(
    source: str, threshold: object, adjustment: object, needs_prior: bool
) -> None:
    modes = [
        f"iterate.label_source={source}",
        f"iterate.threshold={threshold}",
        f"iterate.logit_adjustment={adjustment}",
    ]
    assert sized(compose_config("labels.threshold=0.15", *modes)) == needs_prior
    assert sized(compose_config("labels.threshold=share", *modes))


def test_each_round_is_a_hydra_job_with_its_own_dir(chain: tuple[Path, str]) -> None:
    root, stdout = chain
    runs = root / "runs/tiny"
    for k in (1, 2):
        round_dir = runs / f"round-{k}"
        assert yaml.safe_load((round_dir / ".hydra/config.yaml").read_text())["round"] == k
        assert (round_dir / "checkpoints/last.ckpt").is_file()
        summary = read_summary(round_dir)
        assert summary["round"] == k and summary["in_store"] == 24 and not summary["skipped"]
        assert LabelStore(round_dir / "store").manifest()["complete"]
        assert 0 < summary["labels"]["miou"] <= 1 and 0 <= summary["val"]["miou"] <= 1
        assert 0 < summary["labels"]["changed_fraction"] < 1
    assert read_summary(runs / "round-1")["trained_on"] == str(runs / "labels/store")
    assert read_summary(runs / "round-1")["warm_start"] == str(runs / "cam/checkpoints/last.ckpt")
    assert read_summary(runs / "round-2")["trained_on"] == str(runs / "round-1/store")
    assert read_summary(runs / "round-2")["warm_start"] == str(runs / "round-1/checkpoints/last.ckpt")
    # The round table: printed, in the iterate summary and as CSV, with round 0 = the labels stage.
    summary = read_summary(runs / "iterate")
    assert [row["round"] for row in summary["rounds"]] == [0, 1, 2]
    assert summary["rounds"][0]["label_miou"] == read_summary(runs / "labels")["labels"]["miou"]
    assert summary["rounds"][2]["val_miou"] == read_summary(runs / "round-2")["val"]["miou"]
    first, last = summary["rounds"][0]["label_miou"], summary["rounds"][2]["label_miou"]
    assert summary["label_miou_gain"] == pytest.approx(last - first)
    with open(runs / "iterate/rounds.csv") as file:
        assert [row["round"] for row in csv.DictReader(file)] == ["0", "1", "2"]
    plot = Image.open(runs / "iterate/rounds.png")
    assert plot.format == "PNG" and plot.size == (600, 400)
    assert "round  label_miou  val_miou  changed_fraction  wall_s" in stdout


def test_rounds_are_wandb_runs_in_one_group_with_the_round_table(chain: tuple[Path, str]) -> None:
    root, _ = chain
    runs = {run.name: run for run in offline_runs(root / "runs/tiny")}
    assert set(runs) == {"round-1", "round-2", "iterate"}  # cam and labels ran with the csv logger
    assert {run.group for run in runs.values()} == {"tiny"}
    assert runs["round-2"].job_type == "round"
    assert any("val/mIoU" in step for step in runs["round-1"].history)
    assert any("labels/miou" in step for step in runs["round-2"].history)
    logged = [step["rounds/label_miou"] for step in runs["iterate"].history if "rounds/label_miou" in step]
    expected = [row["label_miou"] for row in read_summary(root / "runs/tiny/iterate")["rounds"]]
    assert logged == pytest.approx(expected)
    assert any("rounds/table" in key for step in runs["iterate"].history for key in step)
    assert any("rounds/plot" in key for step in runs["iterate"].history for key in step)


def test_warm_start_from_the_previous_round_or_the_classifier(chain: tuple[Path, str]) -> None:
    root, _ = chain
    segmenter = root / "runs/tiny/round-1/checkpoints/last.ckpt"
    saved = torch.load(segmenter, map_location="cpu", weights_only=False)
    module = SegmenterModule(**{**saved["hyper_parameters"], "pretrained": False})
    assert not torch.equal(module.net.head.weight, saved["state_dict"]["net.head.weight"])
    load_weights(module, segmenter)
    for key, value in module.state_dict().items():
        assert torch.equal(value, saved["state_dict"][key]), key
    # Round 1 starts from the CAM classifier: its backbone becomes the encoder, its head the head.
    classifier = torch.load(root / "runs/tiny/cam/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    fresh = SegmenterModule(**{**saved["hyper_parameters"], "pretrained": False})
    decoder = {k: v.clone() for k, v in fresh.state_dict().items() if ".decoder." in k}
    load_weights(fresh, root / "runs/tiny/cam/checkpoints/last.ckpt")
    weights = fresh.state_dict()
    assert torch.equal(weights["net.head.weight"], classifier["state_dict"]["net.head.weight"])
    backbone = {k: v for k, v in classifier["state_dict"].items() if k.startswith("net.backbone.")}
    assert backbone and all(
        torch.equal(weights[k.replace("net.backbone.", "net.model.encoder.model.")], v) for k, v in backbone.items()
    )
    assert all(torch.equal(weights[k], v) for k, v in decoder.items())  # the decoder is new
    other = SegmenterModule("resnet14t", VOC_CLASSES, pretrained=False)
    with pytest.raises(IsimError, match=r"has backbone 'resnet10t', not model\.backbone='resnet14t'"):
        load_weights(other, segmenter)


def test_round_before_its_predecessor_is_refused(chain: tuple[Path, str]) -> None:
    root, _ = chain
    result = run_train(root, *ROUNDS, "stage=round", "round=4", check=False)
    assert result.returncode == 2 and "round 4 needs round 3, which has not completed" in result.stderr
    assert "stage=round round=3" in result.stderr and not (root / "runs/tiny/round-4/summary.json").exists()
    result = run_train(root, *ROUNDS, "stage=round", "round=0", check=False)
    assert result.returncode == 2 and "round=0 must be a round number >= 1" in result.stderr


def test_rerun_continues_after_the_last_completed_round(chain: tuple[Path, str]) -> None:
    """What a crash during round 2's relabelling leaves (no summary, part of the store) is finished on re-run;
    round 1 and round 2's finished training are kept as they are."""
    root, _ = chain
    runs = root / "runs/tiny"
    round_1 = (runs / "round-1/summary.json").stat().st_mtime_ns
    val = read_summary(runs / "round-2")["val"]
    store = LabelStore(runs / "round-2/store")
    lost = ["synthetic_00002", "synthetic_00005", "synthetic_00011"]
    before = {name: store.read(name) for name in lost}
    (runs / "round-2/summary.json").unlink()
    for name in lost:
        store.path(name).unlink()
    result = run_train(root, *ITERATE)
    output = result.stdout + result.stderr
    assert "round-1 is done" in output and "running stage=round round=2" in output
    assert (runs / "round-1/summary.json").stat().st_mtime_ns == round_1
    summary = read_summary(runs / "round-2")
    assert summary["labelled_now"] == 3 and summary["in_store"] == 24
    assert summary["val"] == val  # the finished training is validated again, not reported as NaN
    ids = {path.name for path in (runs / "round-2/wandb").glob("offline-run-*/run-*.wandb")}
    assert len(list((runs / "round-2/wandb").glob("offline-run-*"))) == 2 and len(ids) == 1  # one run, continued
    for name in lost:  # the same checkpoint gives the same labels
        np.testing.assert_array_equal(store.read(name), before[name])


def test_iterate_killed_in_training_between_rounds_and_in_relabelling_ends_with_the_same_rounds(
    chain: tuple[Path, str], labelled_project: Path, tmp_path: Path
) -> None:
    """kill -9 of ``stage=iterate`` while round 1 trains, right after round 1 completes, and while round 2
    relabels: each re-run of the same command picks up there, and the round table is the uninterrupted run's."""
    root, _ = chain
    copy_labelled(labelled_project, tmp_path)
    runs, args = tmp_path / "runs/tiny", [*ITERATE, "logger=csv"]
    kill_when(tmp_path, (runs / "round-1/csv").is_dir, *args)  # the logger's dir is made as training starts
    assert not (runs / "round-1/checkpoints/last.ckpt").exists()  # (its only epoch had not ended)
    kill_when(tmp_path, (runs / "round-1/summary.json").is_file, *args)
    assert not (runs / "round-2/summary.json").exists()
    kill_when(tmp_path, lambda: any((runs / "round-2/store").glob("*.png")), *args)
    assert not (runs / "round-2/summary.json").exists() and not (runs / "iterate/summary.json").exists()
    run_train(tmp_path, *args)
    assert round_table(runs) == round_table(root / "runs/tiny")
    assert LabelStore(runs / "round-2/store").manifest()["complete"]


def test_a_round_under_ddp(chain: tuple[Path, str]) -> None:
    """Two gloo ranks train, relabel (sharded) and evaluate a round; rank 0 alone writes the summary and log."""
    root, _ = chain
    run_train(root, *ROUNDS, "stage=round", "round=1", "trainer=ddp_cpu", "hydra.run.dir=runs/tiny/round-1-ddp")
    run_dir = root / "runs/tiny/round-1-ddp"
    summary = read_summary(run_dir)
    assert summary["in_store"] == summary["labelled_now"] == 24 and 0 < summary["labels"]["miou"] <= 1
    assert LabelStore(run_dir / "store").manifest()["complete"]
    assert sorted(path.name for path in run_dir.glob("*.log")) == ["train.log"]


def test_a_step_made_with_other_settings_is_refused_or_rerun(chain: tuple[Path, str], tmp_path: Path) -> None:
    """Changing a key that determines the labels makes the labels and every round stale: refused with the key
    named, or (iterate.rerun=changed) moved aside and run again; the CAM stage, which it does not determine, stays."""
    root, _ = chain
    for part in ("data", "runs"):
        shutil.copytree(root / part, tmp_path / part)
    runs = tmp_path / "runs/tiny"
    cam = (runs / "cam/summary.json").stat().st_mtime_ns
    refused = run_train(tmp_path, *ITERATE, "crf.bilateral.srgb=3", check=False)
    assert refused.returncode == 2 and "labels in" in refused.stderr and "crf.bilateral.srgb: 5 -> 3" in refused.stderr
    assert "iterate.rerun=changed" in refused.stderr and not list(runs.glob("*.stale-*"))
    run_train(tmp_path, *ITERATE, "crf.bilateral.srgb=3", "iterate.rerun=changed", "logger=csv")
    moved = {p.name.split(".")[0] for p in runs.glob("*.stale-*")}
    assert {"labels", "round-1", "round-2"} <= moved and "cam" not in moved  # (and any later round dirs)
    assert read_summary(runs / "labels")["settings"]["bilateral"]["srgb"] == 3
    assert read_summary(runs / "round-2")["determined_by"]["crf.bilateral.srgb"] == 3
    assert (runs / "cam/summary.json").stat().st_mtime_ns == cam


def test_steps_run_through_the_configured_launcher(
    chain: tuple[Path, str], labelled_project: Path, tmp_path: Path
) -> None:
    """With hydra/launcher=submitit_local every round is a submitit job (SLURM's path, on this machine), the
    driver only waits; the round table is the local run's."""
    root, _ = chain
    copy_labelled(labelled_project, tmp_path)
    run_train(tmp_path, *ITERATE, "hydra/launcher=submitit_local", "logger=csv")
    runs = tmp_path / "runs/tiny"
    assert len(list((runs / ".submitit").glob("*/*_log.out"))) == 2  # one submitit job per round
    assert round_table(runs) == round_table(root / "runs/tiny")
    assert read_summary(runs / "round-2")["trained_on"] == str(runs / "round-1/store")
