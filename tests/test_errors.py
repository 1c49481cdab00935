"""Bad input gives one clear line that names the file or key, a non-zero exit, and writes nothing."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from isim.data import VOCDataset
from isim.errors import IsimError, exit_on_user_error
from isim.pseudo_labels import LabelStore
from isim.stages.common import build_trainer
from isim.stages.round import logit_offsets, round_settings
from isim.sweep import objective
from tests.conftest import TINY, TINY_RUN, compose_config, run_train

NAME = "synthetic_00001"


def corrupt_image(root: Path) -> None:
    (root / f"JPEGImages/{NAME}.jpg").write_bytes(b"not a jpeg")


def corrupt_mask(root: Path) -> None:
    (root / f"SegmentationClass/{NAME}.png").write_bytes(b"\x89PNG broken")


def missing_image(root: Path) -> None:
    (root / f"JPEGImages/{NAME}.jpg").unlink()


def missing_xml(root: Path) -> None:
    (root / f"Annotations/{NAME}.xml").unlink()


def unknown_class(root: Path) -> None:
    path = root / f"Annotations/{NAME}.xml"
    path.write_text(path.read_text().replace("<name>", "<name>unicorn", 1))


def empty_split(root: Path) -> None:
    (root / "ImageSets/Segmentation/train.txt").write_text("\n")


def size_mismatch(root: Path) -> None:
    path = root / f"SegmentationClass/{NAME}.png"
    mask = Image.open(path)
    mask.resize((mask.width + 3, mask.height)).save(path)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt image": (corrupt_image, f"JPEGImages/{NAME}.jpg is corrupt"),
    "corrupt mask": (corrupt_mask, f"SegmentationClass/{NAME}.png is corrupt"),
    "missing image": (missing_image, f"image .*{NAME}.jpg is missing"),
    "missing xml": (missing_xml, f"annotation .*{NAME}.xml cannot be read"),
    "unknown class": (unknown_class, f"annotation .*{NAME}.xml names unknown class.*unicorn"),
    "empty split": (empty_split, "split list .*train.txt is empty"),
    "size mismatch": (size_mismatch, f"mask .*{NAME}.png is 67x64 but its image is 64x64"),
}


@pytest.mark.parametrize("case", DAMAGE)
def test_damaged_dataset_names_the_file(case: str, tiny_voc_copy: Path) -> None:
    damage, message = DAMAGE[case]
    damage(tiny_voc_copy)
    with pytest.raises(IsimError, match=message):
        data = VOCDataset(tiny_voc_copy, "train")
        for index in range(len(data)):
            data[index]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("isim: error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_unknown_backbone_suggests_timm_names(tmp_path: Path) -> None:
    result = run_train(tmp_path, *TINY, "model.backbone=resnet5", check=False)
    assert_one_line_error(result, "model.backbone='resnet5' is not a timm model", "resnet50")
    assert not (tmp_path / "data").exists()  # failed before generating or writing anything


def test_missing_dataset_directory_says_how_to_get_data(tmp_path: Path) -> None:
    result = run_train(tmp_path, *TINY_RUN, "data=voc12", f"data.root={tmp_path}/VOC2012", check=False)
    assert_one_line_error(result, f"data.root={tmp_path}/VOC2012 does not exist", "data=synthetic")


def test_missing_train_aug_list_says_where_sbd_lists_are(tiny_voc: Path, tmp_path: Path) -> None:
    result = run_train(
        tmp_path, *TINY_RUN, "data=voc12", f"data.root={tiny_voc}", "data.train_split=train_aug", check=False
    )
    assert_one_line_error(result, "train_aug.txt not found", "jiwoon-ahn/irn voc12/train_aug.txt")


@pytest.mark.parametrize("case", ["corrupt image", "unknown class"])
def test_cli_reports_dataset_errors_in_one_line(case: str, tiny_voc_copy: Path, tmp_path: Path) -> None:
    DAMAGE[case][0](tiny_voc_copy)
    # One worker process: the error crosses a DataLoader worker boundary and still reads as one line.
    result = run_train(
        tmp_path, *TINY_RUN, "data=voc12", f"data.root={tiny_voc_copy}", "data.num_workers=1", "name=bad", check=False
    )
    assert_one_line_error(result, NAME)
    assert not (tmp_path / "runs/bad/cam/summary.json").exists()
    assert not list((tmp_path / "runs/bad/cam").glob("checkpoints/*.ckpt"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_devices_this_machine_lacks(tmp_path: Path) -> None:
    result = run_train(tmp_path, *TINY, "trainer=gpu", check=False)
    assert_one_line_error(result, "the Trainer cannot start with trainer.accelerator=gpu", "trainer=cpu")


def test_more_cpu_processes_than_cores_is_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cores = os.cpu_count() or 1
    cfg = compose_config("trainer=ddp_cpu", f"trainer.devices={cores + 1}", "logger=none", output_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="isim.stages.common"):
        trainer = build_trainer(cfg, max_epochs=1)
    assert trainer.num_devices == cores + 1
    assert f"trainer.devices={cores + 1} CPU processes on {cores} cores" in caplog.text


def test_optimized_metric_is_a_dotted_path_to_a_number() -> None:
    summary = {"stage": "iterate", "rounds": [{"val_miou": 0.3}, {"val_miou": 0.4}], "name": "x"}
    assert objective(summary, "rounds.-1.val_miou") == 0.4 and objective(summary, "rounds.0.val_miou") == 0.3
    for wrong in ("rounds.2.val_miou", "name", "val.miou"):
        with pytest.raises(IsimError, match=f"optimized_metric={wrong} is not a number in the iterate stage"):
            objective(summary, wrong)


def test_a_bug_while_handling_a_user_error_keeps_its_traceback() -> None:
    """An error raised inside an ``except IsimError`` block is a bug (its traceback is shown); a library that
    wraps the IsimError explicitly (``raise ... from``, as Hydra's instantiate does) still gives the one line."""

    def handler_with_a_bug() -> None:
        try:
            raise IsimError("data.root=/nowhere does not exist")
        except IsimError:
            {}["missing"]  # the bug

    with pytest.raises(KeyError, match="missing"):
        exit_on_user_error(handler_with_a_bug)

    def wrapped() -> None:
        try:
            raise IsimError("data.root=/nowhere does not exist")
        except IsimError as error:
            raise RuntimeError("a library's wrapper") from error

    with pytest.raises(SystemExit) as stopped:
        exit_on_user_error(wrapped)
    assert stopped.value.code == 2


def test_a_logit_adjustment_that_is_neither_a_number_nor_share_names_the_key() -> None:
    cfg = OmegaConf.create({"iterate": {"logit_adjustment": "balanced", "label_source": "seg"}})
    with pytest.raises(IsimError, match=r"iterate.logit_adjustment=balanced must be a number \(tau, e.g. 1.0\) or"):
        logit_offsets(cfg, LabelStore("unused"), None, 1)


def test_background_rounds_that_are_not_a_round_count_name_the_key() -> None:
    it = {"logit_adjustment": 1.0, "label_source": "seg", "background_rounds": "first"}
    with pytest.raises(IsimError, match=r"iterate.background_rounds=first must be a number of rounds \(e.g. 1\)"):
        logit_offsets(OmegaConf.create({"iterate": it}), LabelStore("unused"), None, 2)


def test_a_cam_rounds_threshold_that_is_neither_a_fraction_nor_share_names_the_key() -> None:
    cfg = OmegaConf.create({"iterate": {"threshold": 1.5, "label_source": "cam", "logit_adjustment": 1.0}})
    with pytest.raises(IsimError, match=r"iterate.threshold=1.5 must be in \(0, 1\) or `share`"):
        round_settings(cfg, None, lambda solve: 0.0)
