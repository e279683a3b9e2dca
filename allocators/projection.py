"""CROPI's sparse random projection of gradients (docs/methods.md#cropi, "Dimensionality reduction").

The official pipeline (``cropi/core/get_grad.py``) flattens a prompt's gradient over every
trainable parameter, keeps ``sparse_dim`` random coordinates (``torch.randperm(d)[:sparse_dim]``,
seed 0) and projects them with TRAK's dense random projector (Gaussian ``trak_norm`` in
``run_cropi.sh``, Rademacher the script default) to ``proj_dim`` dimensions, seed 0.

``SparseRandomProjection`` does the same on the CPU:

1. coordinates: ``np.random.default_rng(seed).permutation(d)[:sparse_dim]`` (numpy's generator,
   not torch's: the coordinates differ from the official ones for the same seed, the law is the
   same: a uniform random subset);
2. a dense ``sparse_dim × proj_dim`` matrix R with i.i.d. N(0, 1) (``gaussian``) or ±1
   (``rademacher``) entries from the same seeded generator, scaled so that inner products are
   unbiased: P g = √(d / sparse_dim) · g[coords] · R / √proj_dim, E⟨Pu, Pv⟩ = ⟨u, v⟩ over the draw
   of R (exactly) and of the coordinates (for vectors whose mass is spread over coordinates).
   TRAK does not scale; a constant scale changes no cosine and no ranking;
3. ``identity``: no dense matrix, only the coordinate subset (scaled); with ``sparse_dim = d`` this
   is the exact, unprojected gradient. Kept coordinates are in increasing order.

A dense projection only ever reduces dimension (officially 15M coordinates to 32,768). When
``proj_dim`` exceeds ``sparse_dim`` (small simulator models, e.g. d = 64), the dense step could
only approximate inner products that the kept coordinates already give exactly, at a cost of
``proj_dim / sparse_dim`` times the work: the identity is used instead (``kind`` then reads
``identity``; ``requested_kind`` keeps what was asked for).

Johnson–Lindenstrauss: for a dense Gaussian or Rademacher R and fixed u, v, ⟨Pu, Pv⟩ − ⟨u, v⟩ has
standard deviation √((|u|²|v|² + ⟨u, v⟩²) / proj_dim) (Gaussian; at most that for Rademacher),
and |‖Pu‖² − ‖u‖²| ≤ ε‖u‖² with probability ≥ 1 − 2·exp(−proj_dim·(ε²/2 − ε³/3)/2).

Projection is a matrix product (numpy BLAS) in float32, as TRAK projects in fp16/fp32 (relative
rounding 6e-8, far below the projection's own error), done in row blocks so that at most
``block`` rows of the input are copied at a time. The identity projection stays in float64.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

ProjectionKind = Literal["gaussian", "rademacher", "identity"]


def sparse_dim_for(dim: int, sparsity: float) -> int:
    """Coordinates kept at a ``sparsity`` ratio: round(sparsity·d), at least 1, at most d."""
    if not 0.0 < sparsity <= 1.0:
        raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
    return int(min(dim, max(1, round(sparsity * dim))))


class SparseRandomProjection:
    """Random coordinate subset followed by a dense random projection (or none)."""

    def __init__(
        self,
        dim: int,
        sparse_dim: int,
        proj_dim: int,
        kind: ProjectionKind = "gaussian",
        seed: int = 0,
    ):
        if kind not in ("gaussian", "rademacher", "identity"):
            raise ValueError(f"projection must be gaussian, rademacher or identity, not {kind!r}")
        if not 1 <= sparse_dim <= dim:
            raise ValueError(f"sparse_dim must be in [1, {dim}], got {sparse_dim}")
        if kind != "identity" and proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        self.dim = int(dim)
        self.sparse_dim = int(sparse_dim)
        self.requested_kind = kind
        if kind != "identity" and proj_dim > sparse_dim:
            kind = "identity"  # a projection up in dimension (module docstring)
        self.kind = kind
        self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.coords = (
            np.sort(rng.permutation(self.dim)[: self.sparse_dim])
            if self.sparse_dim < self.dim
            else np.arange(self.dim)
        )
        scale = math.sqrt(self.dim / self.sparse_dim)
        if kind == "identity":
            self.out_dim = self.sparse_dim
            self.matrix = None
            self.scale = scale
        else:
            self.out_dim = int(proj_dim)
            if kind == "gaussian":
                r = rng.standard_normal((self.sparse_dim, self.out_dim))
            else:
                r = rng.integers(0, 2, (self.sparse_dim, self.out_dim)).astype(np.float64) * 2 - 1
            self.matrix = (r * (scale / math.sqrt(self.out_dim))).astype(np.float32)
            self.scale = 1.0

    @property
    def is_exact(self) -> bool:
        """True when the projection keeps every coordinate and has no dense matrix."""
        return self.kind == "identity" and self.sparse_dim == self.dim

    def __call__(self, g: np.ndarray, block: int = 4096) -> np.ndarray:
        """Project the rows of ``g`` (n × dim) to n × out_dim."""
        g = np.asarray(g, np.float64)
        if g.ndim == 1:
            return self(g[None, :], block)[0]
        if g.shape[1] != self.dim:
            raise ValueError(f"expected rows of dimension {self.dim}, got {g.shape[1]}")
        if self.matrix is None:
            sub = g if self.sparse_dim == self.dim else g[:, self.coords]
            return sub * self.scale if self.scale != 1.0 else sub.copy()
        out = np.empty((g.shape[0], self.out_dim), np.float32)
        for lo in range(0, g.shape[0], block):
            hi = min(g.shape[0], lo + block)
            sub = g[lo:hi] if self.sparse_dim == self.dim else g[lo:hi, self.coords]
            np.matmul(sub.astype(np.float32), self.matrix, out=out[lo:hi])
        return out.astype(np.float64)
