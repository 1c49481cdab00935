"""Mean-field inference of the fully connected CRF in torch (``crf.backend=torch``), on CPU or GPU.

The model and the update are pydensecrf's (Krähenbühl and Koltun, 2011; densecrf 2013): an appearance
kernel over (x/sxy, y/sxy, r/srgb, g/srgb, b/srgb) and a smoothness kernel over (x/sxy, y/sxy), each
symmetrically normalised and weighted by its Potts ``compat``; Q0 = softmax(-U), then ``iterations`` times
Q = softmax(-U + sum_k compat_k * N_k K_k (N_k Q)). Several images go through one call, each its own group
of the same lattice, padded to a common label count with labels no pixel can take.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence

import torch

from isim.crf.lattice import PermutohedralLattice

IMPOSSIBLE = 1e4  # unary energy of a padding label: exp(-1e4) is 0 in float32


def label_unary(labels: torch.Tensor, num_labels: int, gt_prob: float) -> torch.Tensor:
    """Energy (num_labels, H, W) that trusts each pixel's label with ``gt_prob`` (pydensecrf's
    ``unary_from_labels`` with zero_unsure=False): -log(gt_prob) for it, -log((1-gt_prob)/(n-1)) for the rest."""
    other = -math.log((1.0 - gt_prob) / (num_labels - 1))
    unary = torch.full((num_labels, *labels.shape), other, dtype=torch.float32, device=labels.device)
    return unary.scatter_(0, labels.long()[None], -math.log(gt_prob))


def softmax_unary(probs: torch.Tensor, clip: float = 1e-5) -> torch.Tensor:
    """Energy -log(p) of per-label probabilities (n, H, W) (pydensecrf's ``unary_from_softmax``)."""
    return -torch.log(probs.float().clamp(clip, 1.0))


def dense_crf(
    images: Sequence[torch.Tensor],
    unaries: Sequence[torch.Tensor],
    gaussian: Mapping[str, float],
    bilateral: Mapping[str, float],
    iterations: int,
) -> list[torch.Tensor]:
    """Marginals (n_i, H_i, W_i) for each image (H_i, W_i, 3 uint8) and its unary energy (n_i, H_i, W_i),
    all on the unaries' device."""
    device = unaries[0].device
    with torch.autocast(device.type, enabled=False):  # callers may run under autocast: the lattice needs fp32
        sizes = tuple((int(u.shape[1]), int(u.shape[2])) for u in unaries)
        num_labels = max(unary.shape[0] for unary in unaries)
        unary = torch.cat([_pad_labels(u, num_labels).flatten(1) for u in unaries], 1)  # (L, N): softmax is over L
        colours = torch.cat([image.to(device).reshape(-1, 3).float() for image in images])
        positions, groups = _positions(sizes, device)
        kernels = [
            _Kernel(
                torch.cat([positions / bilateral["sxy"], colours / bilateral["srgb"]], 1), groups, bilateral["compat"]
            ),
            _smoothness_kernel(sizes, float(gaussian["sxy"]), float(gaussian["compat"]), device),
        ]
        q = torch.softmax(-unary, 0)
        for _ in range(iterations):
            energy = -unary
            for kernel in kernels:
                energy = energy + kernel(q.T.contiguous()).T
            q = torch.softmax(energy, 0)
    pixels = [height * width for height, width in sizes]
    return [part.reshape(-1, *u.shape[1:])[: u.shape[0]] for part, u in zip(q.split(pixels, 1), unaries, strict=True)]


class _Kernel:
    """One Potts-weighted, symmetrically normalised Gaussian kernel over a lattice of the pixel features."""

    def __init__(self, features: torch.Tensor, groups: torch.Tensor, compat: float) -> None:
        self.lattice = PermutohedralLattice(features, groups)
        self.norm = torch.rsqrt(self.lattice.filter(features.new_ones(len(features), 1)) + 1e-20)
        self.compat = float(compat)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return self.compat * self.norm * self.lattice.filter(q * self.norm)


@functools.lru_cache(maxsize=8)
def _smoothness_kernel(sizes: tuple[tuple[int, int], ...], sxy: float, compat: float, device: torch.device) -> _Kernel:
    """The position-only kernel depends on the image sizes alone: datasets repeat a few sizes, so it is cached."""
    positions, groups = _positions(sizes, device)
    return _Kernel(positions / sxy, groups, compat)


def _positions(sizes: Sequence[tuple[int, int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of every pixel of every image, row-major, and the index of its image."""
    positions, groups = [], []
    for index, (height, width) in enumerate(sizes):
        y, x = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
        positions.append(torch.stack([x.flatten(), y.flatten()], 1).float())
        groups.append(torch.full((height * width,), index, device=device, dtype=torch.long))
    return torch.cat(positions), torch.cat(groups)


def _pad_labels(unary: torch.Tensor, num_labels: int) -> torch.Tensor:
    missing = num_labels - unary.shape[0]
    return torch.cat([unary, unary.new_full((missing, *unary.shape[1:]), IMPOSSIBLE)]) if missing else unary
