"""SGD with a poly learning-rate decay, as in DeepLab, IRN and ISIM."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import cache

import torch
from torch import nn

ParamGroup = tuple[Iterable[nn.Parameter], float]  # parameters and their multiple of the base learning rate


def sgd_poly(
    groups: Sequence[ParamGroup],
    lr: float,
    momentum: float,
    weight_decay: float,
    total_steps: Callable[[], int],
    power: float,
) -> dict:
    """A Lightning optimizer config: each group trains at its multiple of ``lr``, decayed per batch by
    (1 - step / total_steps) ** power over the run (``total_steps``: every epoch's batches).

    ``power`` 0 keeps the rate constant. The last step runs at ``(1 / total_steps) ** power`` of the rate, as IRN's
    PolyOptimizer leaves it. IRN and ISIM pass their weight decay where torch's SGD takes momentum, so their
    effective momentum is 1e-4 (and the decay applies through the groups): set ``momentum`` to match them.

    ``total_steps`` (Lightning's ``trainer.estimated_stepping_batches``) is asked for at the first step, not here:
    asking while the optimizer is made starts the training data's iterator before a resumed run's checkpoint is
    restored, and that iterator, made for epoch 0, would then serve the resumed epoch.
    """
    optimizer = torch.optim.SGD(
        [{"params": list(params), "lr": lr * mult} for params, mult in groups],
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
    )
    total = cache(lambda: max(int(total_steps()), 1))

    def decay(step: int) -> float:  # step 0 runs at the full rate whatever the total
        return 1.0 if step == 0 else (1 - min(step, total() - 1) / total()) ** power

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
