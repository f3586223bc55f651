"""Checkpoints: one directory per policy version, ``policy.safetensors`` + ``policy.json``.

``policy.json`` is a :class:`~contract.policy_meta.PolicyMeta` (its fields are documented there).
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from contract.errors import UserError
from contract.policy_meta import PolicyMeta, parse_policy_meta
from policy.artefact import Policy
from policy.networks import Actor, Critic, NetworkShape, RewardCritic, build_networks, build_reward_critic

WEIGHTS, META = "policy.safetensors", "policy.json"
#: tensors a checkpoint may lack because it was saved before they existed (they load at their default)
OPTIONAL_TENSORS = {"reward.": ("covariance",)}


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or does not fit what it is loaded for."""


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


def save_checkpoint(
    checkpoint_dir: str | Path,
    actor: Actor,
    critic: Critic,
    meta: dict[str, Any],
    reward_critic: RewardCritic | None = None,
) -> Path:
    """Write a new version directory atomically and return its path.

    Args:
        checkpoint_dir: parent directory of all versions (created if missing).
        actor, critic: networks whose ``state_dict`` is saved (moved to CPU).
        reward_critic: saved as ``reward.*`` when given (``meta.network.reward_critic`` must say so).
        meta: the fields of :class:`~contract.policy_meta.PolicyMeta` but ``format``,
            ``created_at`` and ``weights_sha256``, which are filled in here (``version`` too
            unless given: ``<UTC time>Z-<weights sha256[:8]>``, and ``-1``, ``-2``, ... after it
            when the same weights were saved in the same second, e.g. an agent retired).

    Raises:
        ValueError: ``meta`` does not validate as a :class:`~contract.policy_meta.PolicyMeta`
            (nothing is written).
        CheckpointError: the given version exists already.
    """
    checkpoint_dir = Path(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    tmp = checkpoint_dir / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        tensors = {f"actor.{k}": v.detach().cpu().contiguous() for k, v in actor.state_dict().items()}
        tensors |= {f"critic.{k}": v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}
        if reward_critic is not None:
            tensors |= {f"reward.{k}": v.detach().cpu().contiguous() for k, v in reward_critic.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS))
        digest = _sha256(tmp / WEIGHTS)
        now = datetime.now(UTC)
        version = meta.get("version") or f"{now:%Y%m%dT%H%M%S}Z-{digest[:8]}"
        if not meta.get("version"):  # the same weights saved twice in one second (a change of metadata only)
            taken = 1
            while (checkpoint_dir / version).exists():
                version, taken = f"{now:%Y%m%dT%H%M%S}Z-{digest[:8]}-{taken}", taken + 1
        full = PolicyMeta.model_validate({**meta, "version": version, "created_at": now.isoformat(),
                                          "weights_sha256": digest})
        if full.network.reward_critic != (reward_critic is not None):
            raise ValueError("network.reward_critic must say whether a reward critic is saved")
        with (tmp / META).open("w", encoding="utf-8") as f:
            f.write(full.model_dump_json(indent=2))
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


def read_meta(directory: str | Path) -> PolicyMeta:
    """The validated ``policy.json`` of a version directory (v1 files migrated).

    Raises:
        CheckpointError: missing, not JSON, an unknown format, or content that does not validate.
    """
    meta_path = Path(directory) / META
    try:
        return parse_policy_meta(json.loads(meta_path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise CheckpointError(f"{meta_path}: cannot read it ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: unreadable metadata ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        raise CheckpointError(f"{meta_path}: invalid metadata: {_one_line(exc)}") from None


def _one_line(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ())) or 'policy.json'}: {e.get('msg')}"
                         for e in errors())
    return str(exc)


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
    agents_may_grow: bool = False,
) -> Policy:
    """Load and validate a checkpoint.

    Args:
        path: a version directory, or a parent directory (its newest version is loaded).
        expect_agents: when given, the checkpoint's agent list must equal it (names and order).
        device: where the networks are placed.
        agents_may_grow: the agent list may also be ``expect_agents`` followed by agents added
            since (:mod:`policy.agent_set` only ever appends).

    Raises:
        CheckpointError: missing files, unparsable metadata, a weights hash that does not match,
            tensors whose names or shapes do not fit the recorded architecture, or a different
            agent list.
    """
    directory = resolve_checkpoint(path)
    meta_path, weights_path = directory / META, directory / WEIGHTS
    if not weights_path.is_file():
        raise CheckpointError(f"{directory}: {WEIGHTS} missing")
    meta = read_meta(directory)
    digest = _sha256(weights_path)
    if digest != meta.weights_sha256:
        raise CheckpointError(f"{weights_path}: sha256 {digest[:12]}... does not match policy.json (corrupt?)")
    if expect_agents is not None:
        if agents_may_grow and list(meta.agents[:len(expect_agents)]) != list(expect_agents):
            raise CheckpointError(f"{directory}: agents {meta.agents} do not extend the expected {list(expect_agents)}")
        if not agents_may_grow and list(expect_agents) != list(meta.agents):
            raise CheckpointError(f"{directory}: agents {meta.agents} do not match the expected {list(expect_agents)}")
    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path}: cannot read weights: {exc}") from None
    try:
        actor, critic = build_networks(meta.network, NetworkShape.of_layout(meta.obs_layout))
        reward_critic = build_reward_critic(meta.obs_layout) if meta.network.reward_critic else None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{meta_path}: bad architecture record: {exc}") from None
    modules: list[tuple[str, torch.nn.Module]] = [("actor.", actor), ("critic.", critic)]
    if reward_critic is not None:
        modules.append(("reward.", reward_critic))
    known = tuple(prefix for prefix, _ in modules)
    if stray := sorted(k for k in tensors if not k.startswith(known)):
        raise CheckpointError(f"{weights_path}: tensors {stray[:3]} do not fit the recorded architecture")
    for prefix, module in modules:
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if (size_from_state := getattr(module, "size_from_state", None)) is not None:
            size_from_state(state)  # tensors of fitted data (an outcome actor's kNN member) have its size
        expected = module.state_dict()
        for name in OPTIONAL_TENSORS.get(prefix, ()):  # saved before the tensor existed: its default
            state.setdefault(name, expected[name])
        if set(state) != set(expected):
            raise CheckpointError(f"{weights_path}: tensors {sorted(set(state) ^ set(expected))} do not fit")
        for k, v in state.items():
            if tuple(v.shape) != tuple(expected[k].shape):
                raise CheckpointError(
                    f"{weights_path}: {prefix}{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                )
        module.load_state_dict(state)
    return Policy(directory, meta, actor.to(device).eval(), critic.to(device).eval(),
                  reward_critic.to(device).eval() if reward_critic is not None else None)
