"""Checkpoints: one directory per policy version, ``policy.safetensors`` + ``policy.json``.

``policy.json`` holds: ``format``, ``version``, ``created_at`` (ISO 8601, UTC), ``agents`` (names in
action order), ``capacities``, ``embedding`` (``model``, ``dim``), ``obs_layout`` (``obs_dim``,
``num_routers``, ``load_clip``, ``include_agent_id``), ``network``, ``training`` (the whole
``TrainConfig``), ``eval`` (metrics), ``weights_sha256`` and ``data`` (dataset fingerprint, source,
``watermark`` of the experience log consumed so far).

A directory is written under a temporary name, fsynced, then renamed: a reader sees a whole
checkpoint or none. Loading checks the hash, the tensor shapes and the agent list, and refuses
with :class:`CheckpointError` otherwise.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from env.errors import UserError
from training.networks import Actor, Critic

FORMAT = "agent-router/policy/v1"
WEIGHTS, META = "policy.safetensors", "policy.json"


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or does not fit what it is loaded for."""


@dataclass
class Policy:
    """A loaded policy: the router network (actor), the critic, and the metadata.

    Attributes:
        path: the version directory it was loaded from.
        meta: the parsed ``policy.json``.
        actor: :class:`~training.networks.Actor`, in eval mode.
        critic: :class:`~training.networks.Critic`, in eval mode.
    """

    path: Path
    meta: dict[str, Any]
    actor: Actor
    critic: Critic

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def agents(self) -> list[str]:
        return list(self.meta["agents"])

    @property
    def embedding_model(self) -> str:
        return self.meta["embedding"]["model"]

    def build_obs(self, embedding: torch.Tensor, load: torch.Tensor, router: int = 0) -> torch.Tensor:
        """Obs of router ``router`` as in training: ``embedding ++ load (++ one-hot id)``.

        Args:
            embedding: ``[B, E]`` float32 prompt embeddings.
            load: ``[B, K]`` float32 normalised load, already clipped to ``[0, load_clip]``.

        Returns:
            ``[B, 1, D]`` float32.
        """
        layout = self.meta["obs_layout"]
        parts = [embedding, load]
        if layout["include_agent_id"]:
            one_hot = torch.zeros(embedding.shape[0], layout["num_routers"], dtype=embedding.dtype)
            one_hot[:, router] = 1.0
            parts.append(one_hot)
        return torch.cat(parts, dim=-1).unsqueeze(1)

    @torch.no_grad()
    def probabilities(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Routing distribution ``[B, 1, K]`` float32 for obs ``[B, 1, D]``, mask ``[B, 1, K]`` bool.

        With parameter sharing the single network serves any router; without it, router 0's.
        """
        if not self.actor.net.share_params:
            n = self.meta["obs_layout"]["num_routers"]
            obs = obs.expand(obs.shape[0], n, obs.shape[-1])
            if action_mask is not None:
                action_mask = action_mask.expand(obs.shape[0], n, action_mask.shape[-1])
            return torch.softmax(self.actor(obs, action_mask), dim=-1)[:, :1]
        return torch.softmax(self.actor(obs, action_mask), dim=-1)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def build_networks(meta: dict[str, Any]) -> tuple[Actor, Critic]:
    """Fresh actor and critic with the architecture recorded in ``meta``."""
    layout, net = meta["obs_layout"], meta["network"]
    n, k, hidden = layout["num_routers"], len(meta["agents"]), tuple(net["hidden"])
    actor = Actor(layout["obs_dim"], n, k, net["share_params"], hidden)
    critic = Critic(layout["obs_dim"], n * layout["obs_dim"], n, net["centralised_critic"], net["share_params"], hidden)
    return actor, critic


def save_checkpoint(
    checkpoint_dir: str | Path,
    actor: Actor,
    critic: Critic,
    meta: dict[str, Any],
) -> Path:
    """Write a new version directory atomically and return its path.

    Args:
        checkpoint_dir: parent directory of all versions (created if missing).
        actor, critic: networks whose ``state_dict`` is saved (moved to CPU).
        meta: everything of ``policy.json`` except ``format``, ``version``, ``created_at`` and
            ``weights_sha256``, which are filled in here. Must hold ``agents``, ``embedding``,
            ``obs_layout`` and ``network``.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        tensors = {f"actor.{k}": v.detach().cpu().contiguous() for k, v in actor.state_dict().items()}
        tensors |= {f"critic.{k}": v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        digest = _sha256(tmp / WEIGHTS)
        now = datetime.now(UTC)
        version = meta.get("version") or f"{now:%Y%m%dT%H%M%S}Z-{digest[:8]}"
        full = {"format": FORMAT, "version": version, "created_at": now.isoformat(), **meta,
                "weights_sha256": digest}
        full["version"] = version
        with (tmp / META).open("w", encoding="utf-8") as f:
            json.dump(full, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        with (tmp / WEIGHTS).open("rb") as f:
            os.fsync(f.fileno())
        final = checkpoint_dir / version
        if final.exists():
            raise CheckpointError(f"{final}: a checkpoint with this version already exists")
        os.rename(tmp, final)
        _fsync_dir(checkpoint_dir)
        return final
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A version directory, or the newest version (by ``created_at``) inside a parent directory.

    Raises:
        CheckpointError: nothing loadable at ``path``.
    """
    path = Path(path)
    if (path / META).is_file():
        return path
    if path.is_dir():
        versions = []
        for child in path.iterdir():
            if child.name.startswith(".") or not (child / META).is_file():
                continue
            try:
                created = json.loads((child / META).read_text(encoding="utf-8"))["created_at"]
            except (json.JSONDecodeError, KeyError, OSError, TypeError):
                continue
            versions.append((created, child.name, child))
        if versions:
            return max(versions)[2]
        raise CheckpointError(f"{path}: no checkpoint in this directory (no */{META})")
    raise CheckpointError(f"{path}: checkpoint not found")


def load_checkpoint(
    path: str | Path,
    expect_agents: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> Policy:
    """Load and validate a checkpoint.

    Args:
        path: a version directory, or a parent directory (its newest version is loaded).
        expect_agents: when given, the checkpoint's agent list must equal it (names and order).
        device: where the networks are placed.

    Raises:
        CheckpointError: missing files, unparsable metadata, a weights hash that does not match,
            tensors whose names or shapes do not fit the recorded architecture, or a different
            agent list.
    """
    directory = resolve_checkpoint(path)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS} missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        _ = meta["version"], meta["agents"], meta["obs_layout"]["obs_dim"], meta["network"]["hidden"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    digest = _sha256(weights_path)
    if digest != meta.get("weights_sha256"):
        raise CheckpointError(f"{weights_path}: sha256 {digest[:12]}... does not match policy.json (corrupt?)")
    if expect_agents is not None and list(expect_agents) != list(meta["agents"]):
        raise CheckpointError(
            f"{directory}: agents {meta['agents']} do not match the expected {list(expect_agents)}"
        )
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: cannot read weights: {exc}") from None
    try:
        actor, critic = build_networks(meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: bad architecture record: {exc}") from None
    for prefix, module in (("actor.", actor), ("critic.", critic)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = module.state_dict()
        if set(state) != set(expected):
            raise CheckpointError(f"{weights_path}: tensors {sorted(set(state) ^ set(expected))} do not fit")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(
                    f"{weights_path}: {prefix}{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                )
        module.load_state_dict(state)
    return Policy(directory, meta, actor.to(device).eval(), critic.to(device).eval())
