"""What determines a step's results: the config keys a stage's outputs depend on, recorded in its summary.

``stage=iterate`` reuses a finished step only if the keys that determine it are unchanged, so a re-run after
changing e.g. ``crf.bilateral.srgb`` cannot silently keep labels (and rounds) made with the old value.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

_CAM = ("seed", "data", "model.backbone", "model.pretrained", "model.output_stride", "model.freeze_bn")
STEP_KEYS = {  # the config subtrees each step's results depend on: each step's and its predecessors'
    "cam": (*_CAM, "model.classifier", "cam"),
    "labels": (*_CAM, "model.classifier", "cam", "crf", "labels"),
    "round": ("seed", "data", "model", "cam", "crf", "labels", "iterate"),  # "model" holds all of cam's model.*
}
# Inside those subtrees, what changes speed, logging or where files go, not the numbers.
NICETIES = frozenset(
    {
        "data.num_workers",
        "data.eval_batch_size",
        "data.labels",
        "cam.overlays",
        "cam.save",
        "crf.workers",
        "crf.batch_size",
        "labels.overlays",
        "labels.overwrite",
        "labels.on_error",
        "labels.store_dir",
        "labels.cam_dir",
        "iterate.rounds",
        "iterate.min_change",
        "iterate.init",
        "iterate.rerun",
    }
)


def determining(cfg: DictConfig, step: str) -> dict[str, Any]:
    """The values of the keys that determine ``step`` (cam, labels or round), flattened to dotted names."""
    values: dict[str, Any] = {}
    for key in STEP_KEYS[step]:
        node = OmegaConf.select(cfg, key)
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        values.update(_flatten(key, plain))
    root = f"{cfg.paths.root_dir}/"  # paths inside the project are kept relative: a moved project is the same
    return {
        key: f"<root>/{value[len(root) :]}" if isinstance(value, str) and value.startswith(root) else value
        for key, value in sorted(values.items())
        if key not in NICETIES
    }


def changed_keys(recorded: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """The keys whose values differ (every key when nothing was recorded: a summary of an older isim)."""
    if recorded is None:
        return sorted(current)
    return sorted(key for key in recorded.keys() | current.keys() if recorded.get(key) != current.get(key))


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(f"{prefix}.{key}", item).items()}
    return {prefix: value}
