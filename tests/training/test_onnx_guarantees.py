"""What ``ROUTER_ENCODER=onnx-int8`` guarantees against the torch encoder, on the 774 prompts of the
test split of the shipped data (``configs/default.yaml``'s split) and a small trained policy:

(a) every prompt's int8 vector has cosine >= 0.999 to its torch vector (measured: >= 0.9996);
(b) at least 99% of the policy's greedy decisions are the same (measured: 99.7% to 99.9%);
(c) the policy's mean quality differs by at most 0.003 (measured: at most 0.0013).

The torch vectors come from the session's on-disk embedding cache (so the tests that train on the
shipped data share them); the int8 ones are cached beside them under their own key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from env.dataset import RoutingDataset
from env.onnx_embedder import OnnxEmbedder
from policy.artefact import Policy
from policy.checkpoint import load_checkpoint
from training.config import load_config
from training.data import load_splits
from training.evaluation.offline import policy_choices, summarize
from training.run import run_training

pytestmark = pytest.mark.slow

COSINE_MIN = 0.999
COSINE_MEAN_MIN = 0.9995
AGREEMENT_MIN = 0.99
QUALITY_TOLERANCE = 0.003


@dataclass
class Encoded:
    policy: Policy
    test: RoutingDataset
    torch_vecs: np.ndarray
    int8_vecs: np.ndarray
    cost_weight: float


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, embed_cache, shipped_paths) -> Encoded:
    prompts, agents = shipped_paths
    tmp = tmp_path_factory.mktemp("onnx-guarantees")
    base = [f"data.prompts={prompts}", f"data.agents={agents}", f"embed.cache_dir={embed_cache}", "device=cpu"]
    # a small real policy, as tests/conftest.py's small_config trains it
    small = load_config(None, [*base, "data.limit=600", f"out_dir={tmp / 'run'}", f"checkpoint_dir={tmp / 'ck'}",
                               "env.num_worlds=64", "network.hidden=[64,64]", "ppo.total_steps=480",
                               "ppo.rollout_len=16", "ppo.lr=0.001", "ppo.gamma=0.0"])
    policy = load_checkpoint(run_training(small, progress=False))
    full = load_config(None, base)
    splits = load_splits(full, device="cpu")
    test = splits.splits["test"]
    int8 = OnnxEmbedder(cache_dir=embed_cache, onnx_dir=tmp / "onnx", progress=False)
    assert int8.encoder == "onnx-int8", "this machine's CPU has no int8 instructions: nothing to check"
    return Encoded(policy, test, splits.embeddings("test"), int8.encode(test.prompts), full.env.cost_weight)


def test_a_same_embeddings_within_tolerance(encoded):
    assert len(encoded.test) == 774
    cosine = (encoded.torch_vecs * encoded.int8_vecs).sum(axis=1)
    assert cosine.min() >= COSINE_MIN, f"min cosine {cosine.min():.5f}"
    assert cosine.mean() >= COSINE_MEAN_MIN, f"mean cosine {cosine.mean():.5f}"
    np.testing.assert_allclose(np.linalg.norm(encoded.int8_vecs, axis=1), 1.0, atol=1e-5)


def test_b_greedy_decisions_agree(encoded):
    test = encoded.test
    torch_choice = policy_choices(encoded.policy, encoded.torch_vecs, test.prompt_tokens)
    int8_choice = policy_choices(encoded.policy, encoded.int8_vecs, test.prompt_tokens)
    assert len(set(torch_choice.tolist())) > 1, "the policy routes every prompt alike: it checks nothing"
    agreement = float((torch_choice == int8_choice).mean())
    assert agreement >= AGREEMENT_MIN, f"{agreement:.4f} of decisions agree"


def test_c_policy_quality_within_tolerance(encoded):
    test = encoded.test
    figures = [summarize(policy_choices(encoded.policy, vecs, test.prompt_tokens), test.quality, test.cost_usd,
                         encoded.cost_weight) for vecs in (encoded.torch_vecs, encoded.int8_vecs)]
    difference = figures[1]["quality"] - figures[0]["quality"]
    assert abs(difference) <= QUALITY_TOLERANCE, f"quality {figures[0]['quality']:.4f} -> {figures[1]['quality']:.4f}"
    assert abs(figures[1]["reward"] - figures[0]["reward"]) <= QUALITY_TOLERANCE
