"""Seeds + CRF into label maps, the two-threshold mode, and the pooled writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from isim.data import VOCDataset, voc_palette
from isim.errors import IsimError
from isim.io import write_png
from isim.pseudo_labels import LabelSettings, LabelStore, LabelWriter, class_priors, pseudo_labels
from isim.stages.labels import evaluate_store
from tests.test_crf import IRN, two_region_image


def settings(**changes: object) -> LabelSettings:
    base = {
        "threshold": 0.3,
        "confident": None,
        "unary": "label",
        "gt_prob": IRN.gt_prob,
        "gaussian": dict(IRN.gaussian),
        "bilateral": dict(IRN.bilateral),
        "iterations": IRN.iterations,
    }
    return LabelSettings(**{**base, **changes})


def disc_cam() -> np.ndarray:
    """A smooth CAM peaking on the disc of ``two_region_image`` but spilling past its edge."""
    yy, xx = np.mgrid[:64, :64]
    return np.exp(-((yy - 34) ** 2 + (xx - 33) ** 2) / (2 * 11**2))[None].astype(np.float32)


@pytest.mark.parametrize("unary", ["label", "softmax"])
def test_labels_take_the_class_index_and_follow_the_edge(unary: str) -> None:
    image, truth = two_region_image()
    (label,) = pseudo_labels([image], [disc_cam()], [np.array([8])], settings(unary=unary))
    assert set(np.unique(label)) == {0, 8}
    seed = np.where(disc_cam()[0] > 0.3, 8, 0)
    overlap = lambda a: ((a == 8) & (truth == 1)).sum() / ((a == 8) | (truth == 1)).sum()  # noqa: E731
    assert overlap(label) > overlap(seed) + 0.05


def test_a_segmenters_own_background_decides_where_classes_are_weak() -> None:
    """A crafted segmenter softmax: class 8 gets 0.3 everywhere off the disc and 0.85 on it. With its own
    background (0.7 off the disc) the labels are the disc; a constant background score of 0.05 in its place
    (what relabelling did) calls every pixel class 8."""
    image, truth = two_region_image()
    foreground = np.where(truth == 1, 0.85, 0.3).astype(np.float32)[None]
    (label,) = pseudo_labels(
        [image], [foreground], [np.array([8])], settings(threshold=0.05), backgrounds=[1 - foreground[0]]
    )
    assert ((label == 8) == (truth == 1)).mean() > 0.98 and set(np.unique(label)) == {0, 8}
    (constant,) = pseudo_labels([image], [foreground], [np.array([8])], settings(threshold=0.05))
    assert (constant == 8).all()


@pytest.mark.parametrize("unary", ["label", "softmax"])
def test_a_background_bias_labels_as_a_lower_background_logit_does(unary: str) -> None:
    """``background_bias`` b on a softmax's own background gives the labels of the softmax whose background logit
    is b lower: here the disc's class turns the ring around it over (the logits ramp with the disc's CAM)."""
    image, _ = two_region_image()
    logits = torch.from_numpy(np.concatenate([np.full_like(disc_cam(), 0.6), disc_cam()]))

    def label_of(background_offset: float, bias: float) -> np.ndarray:
        probs = (logits - torch.tensor([background_offset, 0.0])[:, None, None]).softmax(0).numpy()
        biased = settings(unary=unary, background_bias=bias)
        return pseudo_labels([image], [probs[1:]], [np.array([8])], biased, backgrounds=[probs[0]])[0]

    plain, biased, lowered = label_of(0.0, 0.0), label_of(0.0, 0.5), label_of(0.5, 0.0)
    assert (biased == lowered).all() and (biased == 8).sum() > (plain == 8).sum()


def test_two_threshold_mode_ignores_the_uncertain_band() -> None:
    image, _ = two_region_image()
    (label,) = pseudo_labels([image], [disc_cam() * 0.5], [np.array([3])], settings(confident=(0.45, 0.05)))
    assert set(np.unique(label)) <= {0, 3, 255} and (label == 255).any() and (label == 0).any()


def test_pooled_writer_matches_inline_and_skips_bad_images(tiny_voc_copy: Path, tmp_path: Path) -> None:
    names = [f"synthetic_{i:05d}" for i in range(6)]
    (tiny_voc_copy / "JPEGImages/synthetic_00002.jpg").write_bytes(b"broken")
    cams = {n: np.random.default_rng(i).random((1, 64, 64)).astype(np.float32) for i, n in enumerate(names)}
    stores = {}
    for workers in (0, 2):
        store = LabelStore(tmp_path / f"store{workers}")
        writer = LabelWriter(
            store,
            VOCDataset(tiny_voc_copy, "train", check_images=False).image_path,
            settings(),
            workers,
            "skip",
            progress=False,
        )
        for name in names:
            writer.submit(name, cams[name], np.array([5]))
        writer.close()
        assert sorted(writer.written) == [n for n in names if n != "synthetic_00002"]
        assert list(writer.skipped) == ["synthetic_00002"] and "corrupt" in writer.skipped["synthetic_00002"]
        stores[workers] = store
    for name in stores[0].missing(names) + stores[2].missing(names):
        assert name == "synthetic_00002"
    for name in names[:2]:
        assert np.array_equal(stores[0].read(name), stores[2].read(name))
        assert Image.open(stores[0].path(name)).mode == "P"
    assert not list(tmp_path.rglob("*.tmp"))


def test_device_writer_batches_the_torch_crf_like_the_workers(tiny_voc_copy: Path, tmp_path: Path) -> None:
    """With a device (as on a GPU) the writer refines 4 images per torch CRF call in the main process; a broken
    image fails alone, and the labels are those of the worker processes."""
    names = [f"synthetic_{i:05d}" for i in range(6)]
    (tiny_voc_copy / "JPEGImages/synthetic_00003.jpg").write_bytes(b"broken")
    cams = {n: np.random.default_rng(i).random((2, 64, 64)).astype(np.float32) for i, n in enumerate(names)}
    stores = {}
    for mode, options in {"device": {"device": torch.device("cpu"), "batch_size": 4}, "workers": {}}.items():
        store = LabelStore(tmp_path / mode)
        writer = LabelWriter(
            store,
            VOCDataset(tiny_voc_copy, "train", check_images=False).image_path,
            settings(backend="torch"),
            0 if mode == "device" else 2,
            "skip",
            progress=False,
            **options,
        )
        for name in names:
            writer.submit(name, cams[name], np.array([2, 7]))
        writer.close()
        assert sorted(writer.written) == [n for n in names if n != "synthetic_00003"]
        assert list(writer.skipped) == ["synthetic_00003"] and "corrupt" in writer.skipped["synthetic_00003"]
        stores[mode] = {name: store.read(name) for name in writer.written}
    labels = np.stack(list(stores["device"].values()))
    assert set(np.unique(labels)) == {0, 2, 7}
    assert (labels == np.stack(list(stores["workers"].values()))).mean() >= 0.999


def test_writer_raises_with_the_file_name_by_default(tiny_voc_copy: Path, tmp_path: Path) -> None:
    (tiny_voc_copy / "JPEGImages/synthetic_00001.jpg").unlink()
    writer = LabelWriter(
        LabelStore(tmp_path),
        VOCDataset(tiny_voc_copy, "train", check_images=False).image_path,
        settings(),
        1,
        progress=False,
    )
    writer.submit("synthetic_00001", np.ones((1, 64, 64), np.float32), np.array([1]))
    with pytest.raises(IsimError, match=r"synthetic_00001\.jpg is missing"):
        writer.close()


def test_cam_size_mismatch_names_the_image(tiny_voc: Path, tmp_path: Path) -> None:
    writer = LabelWriter(LabelStore(tmp_path), VOCDataset(tiny_voc, "train").image_path, settings(), 0, progress=False)
    with pytest.raises(IsimError, match=r"CAMs of .*synthetic_00000\.jpg are 32x32 but the image is 64x64"):
        writer.submit("synthetic_00000", np.ones((1, 32, 32), np.float32), np.array([1]))


def test_label_miou_in_both_conventions(tiny_voc: Path, tmp_path: Path) -> None:
    """A store equal to GT except an ignored (255) band on the objects: perfect over the pixels it labels, and
    worse in IRN's convention, where the ignored pixels count as background."""
    data = VOCDataset(tiny_voc, "train").subset([f"synthetic_{i:05d}" for i in range(3)])
    store = LabelStore(tmp_path / "store")
    for name in data.names:
        label = data.read_mask(name).copy()
        label[(label > 0) & (label < 255) & (np.arange(label.shape[1]) % 4 == 0)] = 255
        write_png(store.path(name), label, voc_palette())
    report = evaluate_store(store, data)
    assert report["miou"] == 1.0 and report["ignored_fraction"] > 0.01
    assert report["miou_ignored_as_background"] < 0.95


def two_image_store(directory: Path) -> tuple[LabelStore, np.ndarray]:
    """Labels of images a (class 3 on 25 of 100 pixels) and b (classes 3 and 5, 45 counted pixels each, a row
    ignored), with their multi-hot image labels: priors background 75/190, class 3 70/190, class 5 45/90."""
    store = LabelStore(directory / "store")
    first = np.zeros((10, 10), np.uint8)
    first[:5, :5] = 3  # 25 of 100 pixels
    second = np.full((10, 10), 5, np.uint8)
    second[:, :5] = 3  # 50 pixels each
    second[0] = 255  # ignored pixels count nowhere
    for name, label in (("a", first), ("b", second)):
        write_png(store.path(name), label, voc_palette())
    image_labels = np.zeros((2, 20), np.float32)
    image_labels[0, 2] = image_labels[1, [2, 4]] = 1  # a: class 3; b: classes 3 and 5
    return store, image_labels


def test_class_priors_are_pixel_shares_in_the_images_that_have_the_class(tmp_path: Path) -> None:
    store, image_labels = two_image_store(tmp_path)
    priors = class_priors(store, ["a", "b"], image_labels)
    assert priors[0] == pytest.approx(75 / 190)  # background of all 190 counted pixels
    assert priors[3] == pytest.approx((25 + 45) / 190) and priors[5] == pytest.approx(45 / 90)
    assert priors[1] == 1.0  # a class no image has: no offset
