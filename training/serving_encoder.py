"""The encoder a policy is served with by default: the fastest that keeps its decisions.

A policy trained on the transformer's vectors (``embed.encoder: torch``) can be served by torch or by
either ONNX export of the same model (``env.onnx_embedder``): int8 is several times faster on most
CPUs, but its vectors differ a little, and so may some decisions. At the end of training,
:func:`choose_serving_encoder` encodes the validation split's prompts with each candidate, takes the
policy's greedy decisions on them (zero load, the default cost weight) and keeps the candidates that
agree with the decisions on the trained vectors on at least ``min_agreement`` of the prompts (99%).
Of those and torch itself (timed as the server runs it on the CPU: its TorchScript trace,
``env.traced_embedder``, whose vectors are the trained ones up to float rounding), the one that
encodes a prompt in the least time on this machine, one at a time as a request does, is recorded in
``policy.json`` (``embedding.serving``). A server started without ``ROUTER_ENCODER`` uses it and
logs why (``router.context``); a user can still pin one.

Static embeddings are other vectors, not a faster way to the same ones: a policy trained on them
is served by them, and no choice is made.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import UserError
from contract.observation import ObsLayout
from env.encoders import make_embedder, ms_per_prompt_one_at_a_time
from policy.artefact import Policy
from policy.networks import Actor
from training.config import EmbedConfig, TrainConfig
from training.data import EmbeddedSplits
from training.evaluation.offline import greedy_choices

logger = logging.getLogger(__name__)

#: Prompts timed per encoder (one at a time; the fastest of two rounds counts).
TIMED_PROMPTS = 16


def choose_serving_encoder(actor: Actor, layout: ObsLayout, prompts: list[str], tokens: np.ndarray | None,
                           trained: np.ndarray, cfg: EmbedConfig, trained_embedder: Any,
                           onnx_dir: str | Path = Path("var/onnx"),
                           trace_dir: str | Path | None = Path("var/torchscript")) -> dict[str, Any] | None:
    """Choose the encoder that serves this policy by default (see the module docstring).

    Args:
        actor, layout: the trained policy's actor and observation layout.
        prompts: the validation split's prompts (``P`` of them); tokens: ``[P]`` their token counts
            (None: the layout does not read them).
        trained: ``[P, E]`` float32, their embeddings by the encoder the policy was trained on.
        cfg: the run's ``embed`` settings (``serving_candidates``, ``min_agreement``, ``cache_dir``).
        trained_embedder: the training run's embedder (timed as ``torch`` when ``trace_dir`` is None).
        onnx_dir: where the ONNX exports are cached (exported once from the local model files).
        trace_dir: where torch's TorchScript trace is cached, as the server's (``ROUTER_TRACE_DIR``);
            torch is timed by it. None: by ``trained_embedder``.

    Returns:
        ``policy.json``'s ``embedding.serving``: ``{"encoder", "min_agreement", "prompts",
        "agreement": {encoder: share of decisions kept}, "ms_per_prompt": {encoder: ms}}``; None when
        there is nothing to choose (static vectors, no candidates, or no validation prompts).
    """
    if cfg.encoder != "torch" or not cfg.serving_candidates or not prompts:
        return None
    baseline = greedy_choices(actor, layout, trained, tokens)
    agreement: dict[str, float] = {"torch": 1.0}
    embedders: dict[str, Any] = {"torch": trained_embedder}
    if trace_dir is not None:  # what the server runs for torch: the same vectors, faster
        traced = make_embedder("torch", model=cfg.model, cache_dir=cfg.cache_dir, progress=False, trace_dir=trace_dir,
                               log=logger)
        try:
            traced.model  # noqa: B018 - traced (once) and loaded here, where a failure is caught
            embedders["torch"] = traced
        except UserError as exc:
            logger.warning("torch timed with sentence-transformers: %s", exc)
    for name in cfg.serving_candidates:
        try:
            embedder = make_embedder(name, model=cfg.model, cache_dir=cfg.cache_dir, batch_size=cfg.batch_size,
                                     progress=False, onnx_dir=onnx_dir, log=logger)
        except UserError as exc:  # e.g. ONNX Runtime missing: torch serves
            logger.warning("serving encoder %s not considered: %s", name, exc)
            continue
        if embedder.encoder in embedders:  # no int8 kernels on this CPU: the fp32 export already
            continue
        vectors = embedder.encode(prompts)
        agreement[embedder.encoder] = float((greedy_choices(actor, layout, vectors, tokens) == baseline).mean())
        embedders[embedder.encoder] = embedder
    kept = {name: e for name, e in embedders.items() if agreement[name] >= cfg.min_agreement}
    timed = ms_per_prompt_one_at_a_time(kept, prompts[:TIMED_PROMPTS])
    for embedder in embedders.values():
        if embedder is not trained_embedder and getattr(embedder, "cache", None) is not None:
            embedder.cache.close()
    serving = {"encoder": min(timed, key=lambda name: timed[name]), "min_agreement": cfg.min_agreement,
               "prompts": len(prompts), "agreement": agreement, "ms_per_prompt": timed}
    logger.info("%s", describe(serving))
    return serving


def describe(serving: dict[str, Any]) -> str:
    """One line on ``policy.json``'s ``embedding.serving``: the choice, and each encoder's share of
    decisions kept and ms per prompt."""
    per = "; ".join(f"{name}: {100 * kept:.1f}% kept" + (f", {serving['ms_per_prompt'][name]:.2f} ms a prompt"
                                                        if name in serving["ms_per_prompt"] else "")
                    for name, kept in serving["agreement"].items())
    return (f"serving encoder {serving['encoder']}: the fastest that keeps {100 * serving['min_agreement']:g}% of "
            f"the {serving['prompts']} validation decisions ({per})")


def record_serving_encoder(meta: dict[str, Any], cfg: TrainConfig, splits: EmbeddedSplits, policy: Policy) -> None:
    """Set ``meta["embedding"]["serving"]``, the encoder that serves ``policy`` by default
    (:func:`choose_serving_encoder` on the validation split)."""
    val = splits.splits["val"]
    tokens = val.prompt_tokens if policy.layout.agent_prices is not None else None
    serving = choose_serving_encoder(policy.actor, policy.layout, list(val.prompts), tokens, splits.embeddings("val"),
                                     cfg.embed, splits.embedder)
    if serving is not None:
        meta["embedding"]["serving"] = serving
