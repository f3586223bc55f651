"""The served decision as one ONNX Runtime call (``ROUTER_POLICY_RUNTIME=auto``).

In the server a decision is a few dozen small torch ops: the observation of
:func:`contract.observation.build_obs`, the actor's MLP, the softmax. Each pays torch's dispatch on
caches that the encoder and the HTTP stack have just evicted: about 0.7 ms on a 2-core Xeon,
against 0.2 ms in a tight loop (``docs/serving.md``). :func:`decision_head` traces that same torch
code into one ONNX graph and runs it with ONNX Runtime, about 0.16 ms there. The torch code stays
the only definition of the observation and of the policy: the graph is a trace of it, and is used
only once it has been checked against it.

The graph:

* inputs: ``embedding [1, E]`` float32, ``load [1, K]`` float32 (normalised, as
  :meth:`router.service.RoutingService.load_vector`), ``mask [K]`` bool; for a layout with
  ``cost_preference`` also ``cost_weight [1]`` float32 (USD^-1); for a layout with
  ``agent_prices`` also ``tokens [1]`` int64 and ``expected_cost [1, K]`` float32 USD (the
  layout's ``expected_costs``, computed in numpy as the torch path computes them);
* outputs: ``probabilities [K]`` float32 (masked agents 0); for a policy that explores by inverse
  gap weighting (a reward critic and ``meta.exploration``) also ``reward [K]`` float32 (the reward
  critic's estimates) and, with ``optimism > 0``, ``width [K]`` float32.

The export is cached under ``<cache_dir>/<SHA-256 of the networks' tensors and the layout>/``,
built atomically and shared between processes (:func:`env.model_cache.ensure_built`), so a
restart loads it in milliseconds; the :data:`KEEP` most recently used are kept. A head is used
only when, on :data:`PROBES` random inputs (unit embeddings, loads, masks, preferences, prompt
lengths), its probabilities are within :data:`TOLERANCE` of torch's and it picks torch's agent;
otherwise :func:`decision_head` returns None and says why, and the decision stays in torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from env.model_cache import ensure_built
from policy.artefact import Policy, router_probabilities

#: random inputs the head is checked on against torch before it serves
PROBES = 16
#: the largest difference of a probability allowed between the head and torch
TOLERANCE = 1e-5
#: the file of the exported graph in its cache directory (written last: the cache's marker)
GRAPH = "head.onnx"
#: the ONNX opset of the export
OPSET = 17
#: exports kept in the cache, the most recently used (each published policy version has its own)
KEEP = 16


@dataclass(frozen=True)
class HeadOutput:
    """What one call of a :class:`DecisionHead` returns.

    Attributes:
        probabilities: ``[K]`` float32, the policy's routing distribution, masked agents 0.
        reward: ``[K]`` float32, the reward critic's estimate of each agent, or None (a policy that
            does not explore by inverse gap weighting).
        width: ``[K]`` float32, each estimate's posterior standard deviation, or None (no
            optimism).
    """

    probabilities: np.ndarray
    reward: np.ndarray | None = None
    width: np.ndarray | None = None


class _Traced(nn.Module):
    """The torch code that the graph is a trace of: :meth:`Policy.build_obs`, then
    :func:`router_probabilities` (and the reward critic's estimate and width). ``forward`` takes
    the graph's inputs in the order of ``names`` (the keys of :func:`_example`)."""

    def __init__(self, policy: Policy, names: list[str]) -> None:
        super().__init__()
        self.policy, self.names = policy, names
        self.actor, self.reward_critic = policy.actor, policy.reward_critic
        self.reward, self.width = head_outputs(policy)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.names, inputs, strict=True))
        obs = self.policy.build_obs(named["embedding"], named["load"], cost_weight=named.get("cost_weight"),
                                    tokens=named.get("tokens"), expected_cost=named.get("expected_cost"))
        mask = named["mask"].view(1, 1, -1)
        outputs = [router_probabilities(self.actor, self.policy.layout, obs, mask)[0, 0]]
        if self.reward:
            outputs.append(self.reward_critic(obs)[0, 0])
            if self.width:
                outputs.append(self.reward_critic.width(obs)[0, 0])
        return tuple(outputs)


class DecisionHead:
    """One policy's decision in ONNX Runtime (see the module docstring); thread-safe.

    Args:
        policy: the policy whose trace ``graph`` is.
        graph: the exported ONNX file.

    Raises:
        onnxruntime's errors: ``graph`` cannot be loaded.
    """

    def __init__(self, policy: Policy, graph: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.layout = policy.layout

    def __call__(self, embedding: np.ndarray, load: np.ndarray, mask: np.ndarray,
                 cost_weight: float | None = None, tokens: int | None = None) -> HeadOutput:
        """The decision's outputs for one prompt.

        Args:
            embedding: ``[E]`` or ``[1, E]`` float32.
            load: ``[K]`` float32, normalised.
            mask: ``[K]`` bool, the allowed agents (at least one).
            cost_weight: USD^-1, for a policy with ``cost_preference`` (ignored by others).
            tokens: the prompt's token count, for a policy with ``agent_prices`` (ignored by others).

        Raises:
            ValueError: no ``tokens`` for a policy with ``agent_prices``.
        """
        feed = {"embedding": np.asarray(embedding, dtype=np.float32).reshape(1, -1),
                "load": np.asarray(load, dtype=np.float32).reshape(1, -1),
                "mask": np.asarray(mask, dtype=bool)}
        if "cost_weight" in self.inputs:
            feed["cost_weight"] = np.array([cost_weight], dtype=np.float32)
        if "tokens" in self.inputs:
            if tokens is None:
                raise ValueError("this policy observes each prompt's length: pass tokens")
            feed["tokens"] = np.array([tokens], dtype=np.int64)
            feed["expected_cost"] = self.layout.expected_costs([tokens]).astype(np.float32)
        values = dict(zip(self.outputs, self.session.run(None, feed), strict=True))
        return HeadOutput(values["probabilities"], values.get("reward"), values.get("width"))


def head_outputs(policy: Policy) -> tuple[bool, bool]:
    """Whether ``policy``'s head has ``reward`` and ``width`` (what its exploration reads)."""
    meta = policy.meta.exploration
    reward = meta is not None and policy.reward_critic is not None
    return reward, reward and meta.optimism > 0


def head_key(policy: Policy) -> str:
    """SHA-256 (hex, 16 characters) of what the graph depends on: the tensors of the actor and of
    the reward critic, the observation layout, the outputs, and torch's version (the exporter)."""
    digest = hashlib.sha256()
    digest.update(json.dumps([policy.layout.model_dump(mode="json"), head_outputs(policy), torch.__version__],
                             sort_keys=True).encode())
    for module in (policy.actor, policy.reward_critic):
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict(keep_vars=False).items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _example(policy: Policy, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One random input of the graph, by input name in the graph's order (a unit embedding, a load,
    a mask with at least one agent, a preference in the trained range, a prompt length and its
    expected costs)."""
    layout, k = policy.layout, len(policy.agents)
    embedding = rng.normal(size=(1, layout.embed_dim)).astype(np.float32)
    embedding /= np.linalg.norm(embedding)
    load = (rng.random((1, k)) * layout.load_clip * (rng.random((1, k)) < 0.3)).astype(np.float32)
    mask = rng.random(k) < 0.8
    mask[rng.integers(k)] = True
    inputs = {"embedding": torch.from_numpy(embedding), "load": torch.from_numpy(load), "mask": torch.from_numpy(mask)}
    if layout.cost_preference:
        inputs["cost_weight"] = torch.tensor([float(rng.uniform(0.0, layout.cost_weight_max))], dtype=torch.float32)
    if layout.agent_prices is not None:
        tokens = int(rng.integers(1, 8000))
        inputs["tokens"] = torch.tensor([tokens], dtype=torch.int64)
        inputs["expected_cost"] = torch.from_numpy(layout.expected_costs([tokens]).astype(np.float32))
    return inputs


def export_head(policy: Policy, path: Path) -> None:
    """Trace ``policy``'s decision (see the module docstring) into the ONNX file ``path``.

    Raises:
        torch.onnx's errors: a network that cannot be traced.
    """
    example = _example(policy, np.random.default_rng(0))
    traced = _Traced(policy, list(example)).eval()
    outputs = ["probabilities", "reward", "width"][:1 + traced.reward + traced.width]
    # the exporter has no expm1 (a preference critic decodes its cost feature with it): exp(x) - 1,
    # whose absolute error (what the probes bound) is float32 rounding
    torch.onnx.register_custom_op_symbolic(
        "aten::expm1", lambda g, x: g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0))),
        OPSET)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on the shape checks it keeps as constants
        torch.onnx.export(traced, tuple(example.values()), str(path), dynamo=False,
                          opset_version=OPSET, input_names=list(example), output_names=outputs)


def mismatch(policy: Policy, head: DecisionHead, probes: int = PROBES, seed: int = 0) -> str | None:
    """Why ``head`` is not ``policy``'s decision, or None when it is: on ``probes`` random inputs,
    the largest difference of a probability must be within :data:`TOLERANCE`, and the chosen agent
    (the argmax) torch's."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(probes):
        example = _example(policy, rng)
        with torch.no_grad():
            want = [t.numpy() for t in _Traced(policy, list(example))(*example.values())]
        extra = {name: example[name].item() for name in ("cost_weight", "tokens") if name in example}
        got = head(example["embedding"].numpy(), example["load"].numpy(), example["mask"].numpy(), **extra)
        for name, expected, actual in zip(("probabilities", "reward", "width"), want,
                                          (got.probabilities, got.reward, got.width), strict=False):
            if actual is None or actual.shape != expected.shape:
                return f"its {name} has the wrong shape"
            worst = max(worst, float(np.abs(actual - expected).max()))
        if int(np.argmax(got.probabilities)) != int(np.argmax(want[0])):
            return "it chose another agent than torch on a probe"
    if worst > TOLERANCE:
        return f"it differs from torch by {worst:.1e} (tolerance {TOLERANCE:.0e})"
    return None


def _keep_recent(used: Path) -> None:
    """Mark the export ``used`` as just used and delete all but the :data:`KEEP` most recently
    used of its cache (a deleted one that is needed again is exported again)."""
    os.utime(used)
    exports = [p for p in used.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]
    for old in sorted(exports, key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)


def decision_head(policy: Policy, cache_dir: Path) -> tuple[DecisionHead | None, str]:
    """``policy``'s :class:`DecisionHead`, exported (or read from ``cache_dir``) and checked against
    torch; or None when it cannot be made or does not match. Never raises for a policy that cannot
    be exported: the decision then stays in torch.

    Returns:
        The head or None, and a sentence for the log that says which and why.
    """
    try:
        final = ensure_built(Path(cache_dir) / head_key(policy), GRAPH,
                             lambda tmp: export_head(policy, tmp / GRAPH), "the policy's ONNX export")
        head = DecisionHead(policy, final / GRAPH)
        _keep_recent(final)
        why = mismatch(policy, head)
    except Exception as exc:  # tracing, exporting, loading and running raise many kinds
        return None, f"torch (the policy's ONNX export failed: {type(exc).__name__}: {exc})"
    if why is not None:
        return None, f"torch (the policy's ONNX export is not used: {why})"
    return head, f"onnxruntime (its export matched torch on {PROBES} probes)"
