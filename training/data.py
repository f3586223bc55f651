"""Loading a configured dataset split together with its (cached) prompt embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from env.dataset import RoutingDataset, load_dataset, split_indices
from env.embedder import Embedder
from env.encoders import make_embedder
from training.config import TrainConfig


@dataclass
class EmbeddedSplits:
    """The configured dataset, its splits, and an embedder.

    Attributes:
        dataset: the whole dataset.
        splits: ``{"train"|"val"|"test": RoutingDataset}``.
        embedder: the configured :class:`~env.embedder.Embedder` (disk cache on).
    """

    dataset: RoutingDataset
    splits: dict[str, RoutingDataset]
    embedder: Embedder

    def embeddings(self, split: str) -> np.ndarray:
        """``[P, E]`` float32 embeddings of the split's prompts (cached on disk)."""
        return self.embedder.encode(self.splits[split].prompts)


def load_splits(cfg: TrainConfig, device: str | None = None) -> EmbeddedSplits:
    """Read the dataset of ``cfg.data``, split it, and set up the embedder of ``cfg.embed``.

    Raises:
        DataError: the dataset or agents file breaks the contract.
    """
    data = cfg.data
    dataset = load_dataset(data.prompts, data.agents, limit=data.limit)
    idx = split_indices(dataset, data.split_fractions, data.split_seed)
    splits = {name: dataset.subset(i) for name, i in idx.items()}
    embedder = make_embedder(cfg.embed.encoder, model=cfg.embed.model, cache_dir=cfg.embed.cache_dir, device=device,
                             batch_size=cfg.embed.batch_size, static_dir=cfg.embed.static_dir,
                             static_version=cfg.embed.static_version)
    return EmbeddedSplits(dataset, splits, embedder)
