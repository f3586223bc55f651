"""Running normalisation of value targets (PopArt-free "value normalisation" of MAPPO).

Yu et al. 2021, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games",
arXiv 2103.01955, section 5.1 / appendix: the critic learns ``(returns - mean) / std`` where the
running mean and std are those of every return seen so far; its outputs are de-normalised before
GAE. Moments are merged with the parallel algorithm of Chan, Golub and LeVeque 1979 (as in
Stable-Baselines3's ``RunningMeanStd``), in float64, and summed across ranks under
``torch.distributed`` so that every rank holds the same statistics.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class ValueNorm(nn.Module):
    """Running mean and variance of value targets; identity when ``enabled`` is False.

    Buffers (saved with the trainer's state): ``mean`` ``[]`` float64, ``var`` ``[]`` float64,
    ``count`` ``[]`` float64 (number of scalars seen).

    Args:
        enabled: normalise at all (``ppo.norm_value``).
        eps: floor of the std, and the initial count (avoids division by zero before data).
    """

    def __init__(self, enabled: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.enabled, self.eps = enabled, eps
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("var", torch.ones((), dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the moments of every element of ``x`` (any shape) into the running ones."""
        if not self.enabled:
            return
        x = x.detach().to(torch.float64).flatten()
        # the count is filled in on the device: torch.tensor(n, device=...) would be a blocking copy
        n = torch.full((), float(x.numel()), dtype=torch.float64, device=x.device)
        moments = torch.stack([x.sum(), (x * x).sum(), n])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(moments)
        total, total_sq, n = moments
        batch_mean = total / n
        batch_var = (total_sq / n - batch_mean**2).clamp(min=0.0)
        delta = batch_mean - self.mean
        count = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / count
        self.mean += delta * n / count
        self.var.copy_(m2 / count)
        self.count.copy_(count)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt().clamp(min=self.eps)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` in ``x``'s dtype."""
        if not self.enabled:
            return x
        return ((x - self.mean) / self.std).to(x.dtype)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x * std + mean`` in ``x``'s dtype: the critic's output on the returns' scale."""
        if not self.enabled:
            return x
        return (x * self.std + self.mean).to(x.dtype)

    def to_meta(self) -> dict[str, float | bool]:
        """``{"enabled", "mean", "var", "count"}`` as JSON numbers, for a checkpoint's ``policy.json``
        (so a warm start, :mod:`training.retrain`, reads the critic on the returns' scale)."""
        return {"enabled": self.enabled, "mean": float(self.mean), "var": float(self.var),
                "count": float(self.count)}

    @classmethod
    def from_meta(cls, meta: dict[str, float | bool] | None, enabled: bool = True) -> ValueNorm:
        """A :class:`ValueNorm` with the moments of :meth:`to_meta`; fresh (count eps) when ``meta``
        is None (a checkpoint written before the moments were recorded)."""
        vn = cls(bool(meta["enabled"]) if meta else enabled)
        if meta:
            vn.mean.fill_(float(meta["mean"]))
            vn.var.fill_(float(meta["var"]))
            vn.count.fill_(float(meta["count"]))
        return vn
