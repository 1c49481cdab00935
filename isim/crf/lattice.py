"""The permutohedral lattice (Adams, Baek and Davis, 2010) in plain torch ops: fast high-dimensional Gaussian
filtering, as Krähenbühl's densecrf (the C++ core of pydensecrf) uses it for the dense CRF's kernels.

Each point's d features are lifted onto the hyperplane of the (d+1)-dimensional lattice, where the point lies
in a simplex of d+1 vertices. Filtering splats the values onto those vertices (barycentric weights), blurs
along each of the d+1 lattice directions with the kernel [1/2, 1, 1/2], and slices the result back at the
points. densecrf's conventions are kept to the letter (its scale factor, rounding, vertex order, blur and the
``alpha`` constant), so a CRF built on this lattice agrees with pydensecrf's.

The C++ code finds vertices in a hash table. Here each vertex key (its first d coordinates, and an optional
group) is one int64 in mixed radix: a sort numbers the vertices and ``searchsorted`` finds neighbours. Splat,
blur and slice are then fixed sparse matrices (CSR), so a filter is d+3 sparse-dense products on any device.
"""

from __future__ import annotations

import math
import warnings

import torch

MAX_CODE_BITS = 62  # int64 vertex codes, with room for the sign


class PermutohedralLattice:
    """Gaussian filtering of per-point values over ``features`` (N, d), unit standard deviation per feature.

    ``groups`` (N,) of small non-negative ints keeps points of different groups apart (a batch of images in
    one lattice): no vertex is shared across groups.
    """

    def __init__(self, features: torch.Tensor, groups: torch.Tensor | None = None) -> None:
        n, d = features.shape
        elevated = _elevate(features.float())
        rem0, rank = _closest_zero_simplex(elevated)
        weights = _barycentric(elevated, rem0, rank).flatten()  # (N*(d+1),): point-major, remainder-minor
        codes, strides = _vertex_codes(rem0, rank, groups)
        sorted_codes, order = torch.sort(codes.flatten())
        vertex_codes, vertex_of_sorted, counts = torch.unique_consecutive(
            sorted_codes, return_inverse=True, return_counts=True
        )
        self.size = len(vertex_codes)
        vertex = torch.empty_like(order).scatter_(0, order, vertex_of_sorted)  # each (point, remainder)'s vertex
        point = torch.arange(n, device=codes.device).repeat_interleave(d + 1)
        self.splat = _csr(_row_starts(counts), point[order], weights[order], (self.size, n))
        alpha = 1.0 / (1.0 + 2.0**-d)
        self.slice = _csr(
            torch.arange(0, n * (d + 1) + 1, d + 1, device=codes.device), vertex, alpha * weights, (n, self.size)
        )
        self.blurs = [self._blur(vertex_codes, direction, strides) for direction in range(d + 1)]

    def filter(self, values: torch.Tensor) -> torch.Tensor:
        """The Gaussian-weighted sum over all points of ``values`` (N, C), at every point, itself included."""
        lattice = self.splat @ values.float()
        for blur in self.blurs:
            lattice = blur @ lattice
        return self.slice @ lattice

    def _blur(self, vertex_codes: torch.Tensor, direction: int, strides: torch.Tensor) -> torch.Tensor:
        """[1/2, 1, 1/2] along one lattice direction. Its two neighbours are densecrf's n1/n2: the key minus 1
        in every coordinate but plus d in coordinate j, and the mirror; direction d moves the stored d only.
        Every row has three entries, columns in ascending order; a missing neighbour is the vertex itself with
        weight 0 (a sparse matrix with fixed row lengths is built without any masking)."""
        d = len(strides)
        step = abs(int(strides.sum()) - ((d + 1) * int(strides[direction]) if direction < d else 0))
        itself = torch.arange(self.size, device=vertex_codes.device)
        below = _find(vertex_codes, vertex_codes - step)
        found = below >= 0
        # v is above u exactly where u is below v (slot M takes the vertices with nothing below).
        above = torch.full((self.size + 1,), -1, dtype=torch.long, device=below.device)
        above = above.scatter_(0, torch.where(found, below, self.size), itself)[: self.size]
        columns = torch.stack([torch.where(found, below, itself), itself, torch.where(above < 0, itself, above)], 1)
        values = torch.stack(
            [found.float() / 2, torch.ones_like(found, dtype=torch.float32), (above >= 0).float() / 2], 1
        )
        rows = torch.arange(0, 3 * self.size + 1, 3, device=vertex_codes.device)
        return _csr(rows, columns.flatten(), values.flatten(), (self.size, self.size))


def _elevate(features: torch.Tensor) -> torch.Tensor:
    """Lift (N, d) features onto the lattice's hyperplane, scaled for a unit-variance blur (p. 5-6 of the paper)."""
    n, d = features.shape
    index = torch.arange(d, device=features.device, dtype=torch.float32)
    scaled = features * (math.sqrt(2.0 / 3.0) * (d + 1) / torch.sqrt((index + 2) * (index + 1)))
    suffix = torch.cat([scaled.flip(1).cumsum(1).flip(1), scaled.new_zeros(n, 1)], 1)  # sum of scaled[j:]
    steps = torch.arange(1, d + 1, device=features.device, dtype=torch.float32)
    return torch.cat([suffix[:, :1], suffix[:, 1:] - steps * scaled], 1)


def _closest_zero_simplex(elevated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The nearest remainder-0 lattice point (coordinates rounded to multiples of d+1) and each coordinate's
    rank: its position when the residuals are sorted in descending order, ties to the lower index."""
    d1 = elevated.shape[1]
    scaled = elevated / d1
    up, down = torch.ceil(scaled) * d1, torch.floor(scaled) * d1
    rem0 = torch.where(up - elevated < elevated - down, up, down)
    order = torch.sort(elevated - rem0, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d1, device=order.device).expand_as(order))
    rem0 = rem0.long()
    # Off the hyperplane (coordinates do not sum to 0): shift the ranks, wrapping them into [0, d].
    rank += (rem0.sum(1) // d1)[:, None]
    wrap = (rank < 0).long() - (rank > d1 - 1).long()
    return rem0 + d1 * wrap, rank + d1 * wrap


def _barycentric(elevated: torch.Tensor, rem0: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The point's weight on each vertex of its simplex, by remainder: (N, d+1)."""
    d1 = elevated.shape[1]
    v = (elevated - rem0) / d1
    weights = elevated.new_zeros(len(elevated), d1 + 1)
    weights.scatter_add_(1, d1 - 1 - rank, v)
    weights.scatter_add_(1, d1 - rank, -v)
    weights[:, 0] += 1.0 + weights[:, d1]
    return weights[:, :d1]


def _vertex_codes(
    rem0: torch.Tensor, rank: torch.Tensor, groups: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The int64 code of the vertex of each remainder r = 0..d of each point's simplex, (N, d+1), and the
    strides of the d stored coordinates.

    Vertex r's key is rem0[i] + r - (d+1) * [rank[i] > d - r] in coordinate i < d, so its code is the code of
    rem0 plus r * sum(strides) minus (d+1) times the strides of the coordinates whose rank exceeds d - r: a
    cumulative sum over r. Every coordinate gets a margin of 2d so that keys and their blur neighbours stay
    within range, and codes never wrap into another coordinate or group."""
    n, d1 = rem0.shape
    d = d1 - 1
    stored = rem0[:, :d]
    low = stored.amin(0) - 2 * d
    span = stored.amax(0) + 2 * d + 1 - low
    group_count = int(groups.max()) + 1 if groups is not None else 1
    bits = sum(math.log2(int(s)) for s in span) + math.log2(group_count)
    if bits > MAX_CODE_BITS:
        raise ValueError(
            f"the lattice's vertex keys need {bits:.0f} bits (> {MAX_CODE_BITS}): features span too "
            "wide a range; use larger kernel widths (sxy, srgb) or fewer images per call"
        )
    strides = torch.cat([span.flip(0).cumprod(0).flip(0)[1:], span.new_ones(1)])
    base = ((stored - low) * strides).sum(1)
    if groups is not None:
        base += groups.long() * (strides[0] * span[0])
    # Coordinate i (rank k) leaves the canonical offset r from r = d + 1 - k on: add its stride there.
    leaving = torch.zeros(n, d1 + 1, dtype=torch.long, device=rem0.device)
    leaving.scatter_add_(1, d1 - rank[:, :d], strides.expand(n, d))
    remainder = torch.arange(d1, device=rem0.device)
    codes = base[:, None] + remainder * strides.sum() - d1 * leaving[:, :d1].cumsum(1)
    return codes, strides


def _find(vertex_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Index of each code in the sorted ``vertex_codes``, or -1 where it is not a vertex."""
    position = torch.searchsorted(vertex_codes, codes).clamp_(max=len(vertex_codes) - 1)
    return torch.where(vertex_codes[position] == codes, position, -1)


def _row_starts(counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _csr(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix; int32 indices where they fit (MKL and cuSPARSE then use them as they are: ~25% faster)."""
    index_type = torch.int32 if len(columns) < 2**31 - 1 else torch.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta": the products used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            rows.to(index_type), columns.to(index_type), values.float(), size, check_invariants=False
        )
