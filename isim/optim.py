"""SGD with momentum and a poly learning-rate decay over the whole run, as in DeepLab and IRN."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def sgd_poly(
    base: Iterable[nn.Parameter],
    heads: Iterable[nn.Parameter],
    lr: float,
    head_lr_mult: float,
    momentum: float,
    weight_decay: float,
    total_steps: int,
    power: float,
) -> dict:
    """A Lightning optimizer config: ``heads`` train at ``head_lr_mult`` x ``lr``; the decay is stepped per batch.

    ``total_steps`` is the whole run (every epoch), so the rate reaches zero at the last step.
    """
    optimizer = torch.optim.SGD(
        [{"params": list(base), "lr": lr}, {"params": list(heads), "lr": lr * head_lr_mult}],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    total_steps = max(int(total_steps), 1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (1 - min(step, total_steps) / total_steps) ** power
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
