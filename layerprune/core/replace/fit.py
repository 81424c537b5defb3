"""Fit one d×d map T per run so that ``a + m·T ≈ y`` (docs/methods.md §6.1).

Least squares: T = (MᵀM + λI)⁻¹ Mᵀ(Y − A), with MᵀM and Mᵀ(Y − A) summed chunk by chunk in float64
(a hidden size of 8192 needs two 512 MB matrices, never all activations). Cosine: Adam on the mean
cosine distance 1 − cos(a + m·T, y), one chunk of ``chunk_tokens`` tokens per step, starting from
the least-squares T; the result is kept only when it does not raise the distance over all tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

Chunks = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
"""chunks() -> a fresh iterable of (a, m, y) activation chunks, each [tokens, d]."""


def _pieces(chunks: Chunks, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    # Stored chunks are one calibration batch each; cut them to at most ``size`` tokens.
    for a, m, y in chunks():
        for s in range(0, a.shape[0], size):
            yield a[s:s + size], m[s:s + size], y[s:s + size]


@dataclass
class NormalEquations:
    """Σ MᵀM and Σ Mᵀ(Y − A) in float64, accumulated a chunk at a time."""

    gram: torch.Tensor
    cross: torch.Tensor
    tokens: int = 0

    @classmethod
    def zeros(cls, d: int, device: torch.device | str = "cpu") -> NormalEquations:
        z = torch.zeros(d, d, dtype=torch.float64, device=device)
        return cls(gram=z, cross=z.clone())

    def add(self, a: torch.Tensor, m: torch.Tensor, y: torch.Tensor) -> None:
        m64 = m.to(self.gram.device, torch.float64)
        r64 = y.to(self.gram.device, torch.float64) - a.to(self.gram.device, torch.float64)
        self.gram.addmm_(m64.T, m64)
        self.cross.addmm_(m64.T, r64)
        self.tokens += m.shape[0]


def accumulate(chunks: Chunks, d: int, *, chunk_tokens: int, device: torch.device | str = "cpu") -> NormalEquations:
    eq = NormalEquations.zeros(d, device)
    for a, m, y in _pieces(chunks, chunk_tokens):
        eq.add(a, m, y)
    return eq


def solve(eq: NormalEquations, ridge: float) -> tuple[torch.Tensor, float]:
    """``(T, λ)``: the ridge solution in float64, λ = ridge · tr(MᵀM)/d.

    Cholesky when MᵀM + λI is positive definite; otherwise (ridge 0 on rank-deficient data) the
    minimum-norm solution from an eigendecomposition that drops eigenvalues below 1e-12 · the largest.
    """
    d = eq.gram.shape[0]
    lam = float(ridge) * float(eq.gram.diagonal().sum()) / d
    g = eq.gram + lam * torch.eye(d, dtype=torch.float64, device=eq.gram.device)
    chol, info = torch.linalg.cholesky_ex(g)
    if int(info) == 0:
        return torch.cholesky_solve(eq.cross, chol), lam
    vals, vecs = torch.linalg.eigh(g)
    keep = vals > 1e-12 * vals.abs().max()
    inv = torch.where(keep, 1.0 / vals.clamp_min(1e-300), torch.zeros_like(vals))
    return vecs @ (inv[:, None] * (vecs.T @ eq.cross)), lam


@torch.no_grad()
def evaluate(chunks: Chunks, t: torch.Tensor, *, chunk_tokens: int, device: torch.device | str = "cpu") -> dict[str, float]:
    """Fit of T over all tokens: mean cosine of ``a + m·T`` and of plain removal ``a + m`` with ``y``,
    and the residuals ‖Y − A − M·T‖²/‖Y − A‖² (and with T = I)."""
    t32 = t.to(device, torch.float32)
    cos_fit = cos_removed = 0.0
    res_fit = res_removed = target = 0.0
    n = 0
    for a, m, y in _pieces(chunks, chunk_tokens):
        a, m, y = a.to(device), m.to(device), y.to(device)
        pred = a + m @ t32
        cos_fit += float(torch.nn.functional.cosine_similarity(pred, y, dim=-1).double().sum())
        cos_removed += float(torch.nn.functional.cosine_similarity(a + m, y, dim=-1).double().sum())
        r = (y - a).double()
        res_fit += float((r - (m @ t32).double()).pow(2).sum())
        res_removed += float((r - m.double()).pow(2).sum())
        target += float(r.pow(2).sum())
        n += a.shape[0]
    target = max(target, 1e-300)
    return {"cosine_removed": cos_removed / n, "cosine": cos_fit / n,
            "residual_removed": res_removed / target, "residual": res_fit / target}


def _cycle(chunks: Chunks, size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    # Passes over the stored chunks, one piece in memory at a time (the windows were drawn at random
    # offsets already, so reading them in order needs no shuffle to be an unbiased stream).
    while True:
        empty = True
        for piece in _pieces(chunks, size):
            empty = False
            yield piece
        if empty:
            raise ValueError("no activations to fit on")


def optimise_cosine(chunks: Chunks, t0: torch.Tensor, *, steps: int, learning_rate: float, chunk_tokens: int,
                    device: torch.device | str = "cpu",
                    check: Callable[[], None] | None = None) -> tuple[torch.Tensor, list[float]]:
    """``steps`` Adam steps on mean(1 − cos(a + m·T, y)) from ``t0``, one piece of at most
    ``chunk_tokens`` tokens per step, cycling over the chunks; returns T (float32) and each step's loss."""
    t = t0.to(device, torch.float32).clone().requires_grad_(True)
    opt = torch.optim.Adam([t], lr=learning_rate)
    losses: list[float] = []
    stream = _cycle(chunks, chunk_tokens)
    for _ in range(steps):
        a, m, y = (x.to(device) for x in next(stream))
        loss = 1.0 - torch.nn.functional.cosine_similarity(a + m @ t, y, dim=-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if check is not None:
            check()
    return t.detach(), losses
