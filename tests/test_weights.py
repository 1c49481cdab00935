"""Backbone weights from a local file, the hub failing offline as one line, warm starts that never ask the hub,
and input normalisation that follows the backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from isim.data.transforms import IMAGENET_MEAN, input_normalization
from isim.errors import IsimError
from isim.models import Classifier
from isim.models.segmenter import Segmenter
from isim.modules.checkpoint import load_network
from isim.stages.common import build_datamodule
from tests.conftest import TINY, compose_config, read_summary, run_train

OFFLINE = {"HF_HUB_OFFLINE": "1"}  # and an empty cache: HF_HOME set per test


def assert_same_weights(loaded: torch.nn.Module, source: dict[str, torch.Tensor]) -> None:
    state = loaded.state_dict()
    assert state and all(torch.equal(value, source[key]) for key, value in state.items())


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_weights_file_loads_into_classifier_and_segmenter(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False).state_dict()  # the full model, fc included
    path = tmp_path / f"weights{suffix}"
    torch.save(source, path) if suffix == ".pth" else save_file(source, path)
    assert_same_weights(Classifier("resnet10t", 20, pretrained=str(path)).backbone, source)
    assert_same_weights(Segmenter("resnet10t", 21, pretrained=str(path)).model.encoder.model, source)
    fresh = Classifier("resnet10t", 20, pretrained=False).backbone.state_dict()
    assert not torch.equal(fresh["conv1.0.weight"], source["conv1.0.weight"])


def test_an_isim_checkpoint_gives_its_backbone(labelled_project: Path) -> None:
    checkpoint = labelled_project / "runs/tiny/cam/checkpoints/last.ckpt"
    classifier = load_network(checkpoint)
    segmenter = Segmenter("resnet10t", 21, pretrained=str(checkpoint))
    assert_same_weights(segmenter.model.encoder.model, classifier.backbone.state_dict())


def test_weights_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(
        IsimError,
        match=r"resnet18\.pth does not fit model.backbone='resnet10t': of its \d+ weights "
        r"\d+ missing \(e\.g\. conv1\.0\.weight\), \d+ of another shape \(e\.g\. "
        r"layer2\.0\.downsample\.1\.weight\), \d+ unexpected",
    ):
        Classifier("resnet10t", 20, pretrained=str(tmp_path / "resnet18.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not weights")
    with pytest.raises(IsimError, match=r"junk\.pth is not a weights file"):
        Segmenter("resnet10t", 21, pretrained=str(tmp_path / "junk.pth"))
    with pytest.raises(IsimError, match=r"none\.pth not found; give a weights file"):
        Classifier("resnet10t", 20, pretrained=str(tmp_path / "none.pth"))


def test_hub_weights_offline_are_one_line_and_warm_starts_never_ask(labelled_project: Path, tmp_path: Path) -> None:
    """Offline with an empty cache: asking the hub stops with one line; a segmenter that warm-starts from the
    CAM classifier (as every ISIM round does) trains without asking."""
    (tmp_path / "data").symlink_to(labelled_project / "data")
    env = {**OFFLINE, "HF_HOME": str(tmp_path / "empty_cache")}
    seg = [*TINY, "name=tiny", "stage=seg", "seg.max_epochs=1", "data.labels=gt", "model.pretrained=true"]
    result = run_train(tmp_path, *seg, check=False, env=env)
    assert result.returncode == 2 and "cannot get the pretrained weights of model.backbone='resnet10t'" in result.stderr
    assert "model.pretrained=/path/to/weights.pth" in result.stderr and "Traceback" not in result.stderr
    classifier = labelled_project / "runs/tiny/cam/checkpoints/last.ckpt"
    run_train(tmp_path, *seg, f"seg.init={classifier}", env=env)
    assert read_summary(tmp_path / "runs/tiny/seg")["model"]["pretrained"] is False


def test_normalisation_follows_the_backbone_unless_set() -> None:
    assert input_normalization(None, None, "tf_efficientnet_lite0") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert input_normalization(None, None, "resnet10t")[0] == IMAGENET_MEAN
    assert input_normalization([0.1, 0.2, 0.3], None, "tf_efficientnet_lite0") == ((0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    datamodule = build_datamodule(compose_config("model.backbone=tf_efficientnet_lite0"))
    normalize = datamodule.eval_tf.transforms[0]
    assert tuple(normalize.mean) == (0.5, 0.5, 0.5) and tuple(normalize.std) == (0.5, 0.5, 0.5)
    assert datamodule.mean == (0.5, 0.5, 0.5) and datamodule.std == (0.5, 0.5, 0.5)
    normalize = build_datamodule(compose_config("data.mean=[0.4,0.4,0.4]")).eval_tf.transforms[0]
    assert tuple(normalize.mean) == (0.4, 0.4, 0.4) and tuple(normalize.std) == (0.229, 0.224, 0.225)
