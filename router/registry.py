"""Hot swap of the served policy, and every replica following the version published in Redis.

:class:`PolicyRegistry` holds the :class:`~router.service.RoutingService` being served
(``current``) and the one before it. A reload names a version (a directory under
``ROUTER_CHECKPOINT``), loads and validates it in a worker thread, and only then swaps one
reference on the event loop; requests in flight finish on the policy they started with, and a
refused checkpoint leaves the old one serving. With Redis, :class:`PolicyFollower` keeps every
replica on the version published under ``<prefix>:policy:current`` (pub/sub
``<prefix>:policy:events``, plus a poll). ``docs/hot-swap.md`` describes the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import torch

from contract.errors import DomainError, UserError
from env.embedder import canonical_model_id
from env.encoders import check_vectors
from experience.base import utc_now_iso
from policy.artefact import Policy
from policy.checkpoint import META, CheckpointError, load_checkpoint, read_meta, resolve_checkpoint
from router.service import RoutingService

logger = logging.getLogger(__name__)



#: A version name: a directory of the checkpoint root (no path separators, not "." or "..").
VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


class PolicyRefused(DomainError):
    """A checkpoint that cannot replace the served policy (corrupt, unfitting, non-finite output)."""

    status_code = 422


class UnknownVersion(PolicyRefused):
    """No policy version of that name under the checkpoint root (or not a version name at all)."""

    status_code = 404


class NoPreviousPolicy(PolicyRefused):
    """A rollback with no previous policy in this process."""

    status_code = 409


class PublishFailed(DomainError):
    """The new version could not be published to Redis; nothing was swapped."""

    status_code = 503
    retry_after = True


def smoke_check(policy: Policy, embed_dim: int, samples: int = 4) -> None:
    """Run the policy on random unit embeddings (zero and random load) and check its output.

    Raises:
        PolicyRefused: the forward pass fails, or the probabilities are not finite, negative, or
            do not sum to 1 (within 1e-4).
    """
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(samples, embed_dim, generator=generator)
    embedding = embedding / embedding.norm(dim=-1, keepdim=True)
    k = len(policy.agents)
    load = torch.rand(samples, k, generator=generator) * policy.layout.load_clip
    load[0] = 0.0
    try:
        tokens = torch.tensor([1, 100, 1000, 10000][:samples] + [10] * max(0, samples - 4))
        probs = policy.probabilities(policy.build_obs(embedding, load, tokens=tokens))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise PolicyRefused(f"{policy.path}: the smoke forward pass failed: {exc}") from None
    if tuple(probs.shape) != (samples, 1, k):
        raise PolicyRefused(f"{policy.path}: the policy gives probabilities of shape {tuple(probs.shape)}, "
                            f"expected {(samples, 1, k)}")
    if not bool(torch.isfinite(probs).all()):
        raise PolicyRefused(f"{policy.path}: the policy gives non-finite probabilities (NaN or inf weights?)")
    sums = probs.sum(dim=-1)
    if bool((probs < 0).any()) or not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)):
        raise PolicyRefused(f"{policy.path}: the policy's probabilities do not form a distribution "
                            f"(sums {sums.flatten().tolist()})")


class PolicyRegistry:
    """The served :class:`RoutingService` and the previous one; loads, validates and swaps.

    Args:
        service: the service started with (already warmed up: its embedder fits its policy).
        checkpoint: ``ROUTER_CHECKPOINT``: a directory of versions, or one version directory
            (then its parent is where version names are looked up).
        make_service: builds the service of a newly loaded policy; default
            ``RoutingService(policy, service.embedder)`` (the embedder is shared).

    Attributes:
        current: the service new requests use. Read it once per request.
        previous: the service served before ``current``; None until the first swap.
        loaded_at: ISO 8601 UTC time ``current`` started serving here.
        publisher: ``async publisher(ref)`` that publishes a version to the other replicas
            (raises :class:`PublishFailed`); None: single process, nothing published.
    """

    def __init__(
        self,
        service: RoutingService,
        checkpoint: str | Path,
        make_service: Callable[[Policy], RoutingService] | None = None,
    ) -> None:
        self.current = service
        self.previous: RoutingService | None = None
        self.loaded_at = utc_now_iso()
        self.previous_loaded_at: str | None = None
        checkpoint = Path(checkpoint)
        self.root = (checkpoint.parent if (checkpoint / META).is_file() else checkpoint).resolve()
        self.embedder = service.embedder
        self.embed_dim = service.embed_dim
        self._make_service = make_service or (lambda policy: RoutingService(policy, self.embedder))
        self._lock = asyncio.Lock()
        self.publisher: Callable[[str], Awaitable[None]] | None = None

    # --- resolving and validating (worker thread) ------------------------------------------

    def versions(self) -> list[str]:
        """Names of the version directories under the checkpoint root, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and (p / META).is_file())

    def resolve(self, ref: str | None) -> Path:
        """The version directory ``ref`` names (resolved, absolute), always inside the root.

        Args:
            ref: None or empty: the newest version under ``ROUTER_CHECKPOINT``; else a version
                name (a directory of the checkpoint root).

        Raises:
            UnknownVersion: no such version. A ``ref`` that is not a version name (a path, ``..``,
                a link out of the root) gets one message, whether or not something exists there.
        """
        if not ref:
            try:
                return resolve_checkpoint(self.root).resolve()
            except CheckpointError as exc:
                raise UnknownVersion(str(exc)) from None
        outside = UnknownVersion(f"{ref!r} is not a policy version: reload takes the name of a version "
                                 "directory under ROUTER_CHECKPOINT (GET /admin/policy shows the one served)")
        if not VERSION_NAME.fullmatch(ref):
            raise outside
        target = (self.root / ref).resolve()
        if target.parent != self.root:
            raise outside
        if not (target / META).is_file():
            shown = ", ".join(self.versions()[-10:]) or "none"
            raise UnknownVersion(f"unknown policy version {ref!r} (the newest versions: {shown})")
        return target

    def ref_for(self, directory: Path) -> str:
        """What is published for ``directory``: its version name."""
        return Path(directory).resolve().name

    def prepare(self, directory: Path) -> RoutingService:
        """Load and validate the checkpoint at ``directory``; a service ready to swap in.

        Checks: weights hash, tensor shapes and agent list (the served ones, names and order,
        followed by any agents added since: :mod:`policy.agent_set`);
        the embedding model and width of the shared embedder; a smoke forward pass.

        Raises:
            PolicyRefused: any check fails (the message says what, and that the old policy keeps
                serving).
        """
        serving = self.current
        try:
            policy = load_checkpoint(directory, expect_agents=serving.agents, agents_may_grow=True)
            model = canonical_model_id(policy.embedding_model)
            if model != self.embedder.model_id:
                raise PolicyRefused(f"{directory}: the policy embeds prompts with {model}, but this server's "
                                    f"embedder is {self.embedder.model_id}; that change needs a restart")
            try:
                check_vectors(policy.meta.embedding.encoder, self.embedder.encoder, f"{directory}: policy")
            except UserError as exc:
                raise PolicyRefused(f"{exc}; that change needs a restart") from None
            serving_version = getattr(self.embedder, "version", None)
            if policy.meta.embedding.distillation != serving_version:
                raise PolicyRefused(f"{directory}: the policy was trained on static distillation "
                                    f"{policy.meta.embedding.distillation}, this server serves {serving_version}; "
                                    "that change needs a restart")
            service = self._make_service(policy)
            if service.embed_dim != self.embed_dim:
                raise PolicyRefused(f"{directory}: the policy expects {service.embed_dim}-dim embeddings, "
                                    f"the embedder gives {self.embed_dim}")
            smoke_check(policy, self.embed_dim)
        except (PolicyRefused, CheckpointError) as exc:
            raise PolicyRefused(f"refused: {exc}; still serving {serving.version}") from None
        except (KeyError, TypeError, ValueError) as exc:  # metadata that loads but does not fit
            raise PolicyRefused(f"refused: {directory}: unusable metadata ({type(exc).__name__}: {exc}); "
                                f"still serving {serving.version}") from None
        return service

    def _known(self, directory: Path) -> RoutingService | None:
        """``current`` or ``previous`` when it was loaded from ``directory`` and that checkpoint is
        unchanged on disk (same weights hash in its ``policy.json``); else None."""
        for service in (self.current, self.previous):
            if service is None or Path(service.policy.path).resolve() != directory:
                continue
            try:
                meta = read_meta(directory)
            except CheckpointError:
                return None
            if meta.weights_sha256 == service.policy.meta.weights_sha256:
                return service
        return None

    # --- swapping (event loop) ------------------------------------------------------------

    def _swap(self, service: RoutingService, source: str) -> bool:
        """Make ``service`` current (one reference assignment); False when it already is."""
        if service is self.current:
            return False
        old = self.current
        self.previous, self.previous_loaded_at = old, self.loaded_at
        self.current, self.loaded_at = service, utc_now_iso()
        logger.info("policy %s -> %s (%s)", old.version, service.version, source)
        return True

    async def _obtain(self, ref: str | None) -> tuple[Path, RoutingService]:
        directory = await anyio.to_thread.run_sync(self.resolve, ref)
        known = await anyio.to_thread.run_sync(self._known, directory)
        if known is not None:
            return directory, known
        return directory, await anyio.to_thread.run_sync(self.prepare, directory)

    async def reload(self, ref: str | None = None) -> RoutingService:
        """Load ``ref`` (see :meth:`resolve`), validate it, publish it, swap it in.

        Reloading the version already served re-publishes it and changes nothing here.

        Returns:
            The service now current.

        Raises:
            UnknownVersion: no checkpoint there.
            PolicyRefused: the checkpoint fails validation.
            PublishFailed: Redis did not take the new version (nothing was swapped).
        """
        async with self._lock:
            directory, service = await self._obtain(ref)
            if self.publisher is not None:
                await self.publisher(self.ref_for(directory))
            self._swap(service, "reload")
            return self.current

    async def rollback(self) -> RoutingService:
        """Swap back to the previous policy (and publish it).

        Returns:
            The service now current (the one that was previous).

        Raises:
            NoPreviousPolicy: this process has served only one policy.
            PublishFailed: Redis did not take it (nothing was swapped).
        """
        async with self._lock:
            target = self.previous
            if target is None:
                raise NoPreviousPolicy(f"no previous policy to roll back to; serving {self.current.version}, "
                                       "the only policy this process has served")
            if self.publisher is not None:
                await self.publisher(self.ref_for(Path(target.policy.path)))
            self._swap(target, "rollback")
            return self.current

    async def follow(self, ref: str) -> bool:
        """Serve the version published as ``ref`` (a replica following Redis); nothing is published.

        Returns:
            True when the served policy changed.

        Raises:
            UnknownVersion, PolicyRefused: as :meth:`reload`; the old policy keeps serving.
        """
        async with self._lock:
            _, service = await self._obtain(ref)
            return self._swap(service, f"published {ref}")
