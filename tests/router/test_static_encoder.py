"""``embed.encoder: static`` / ``ROUTER_ENCODER=static``: static embeddings distilled once from the
bundled MiniLM, a policy trained on them and served by the real server, and the one-line refusal
of a policy served under an encoder it was not trained for."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.harness import ROOT

PROMPTS = ["What is the derivative of x^3 * sin(x)?", "Write a haiku about autumn rain.",
           "Translate 'good morning' into French."]


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
    """One distillation for the module (about 25 s on 2 quiet cores)."""
    from env.static_embedder import StaticEmbedder

    path = tmp_path_factory.mktemp("static")
    StaticEmbedder(static_dir=path, progress=False).model  # noqa: B018 - distils into path
    return path


def test_static_vectors_are_unit_norm_cached_and_not_the_transformer(static_dir, tmp_path):
    from env.embedder import Embedder
    from env.encoders import make_embedder

    static = make_embedder("static", cache_dir=tmp_path, static_dir=static_dir, progress=False)
    assert static.encoder == "static" and static.dim == 384
    first = static.encode(PROMPTS)
    assert first.shape == (3, 384) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    again = make_embedder("static", cache_dir=tmp_path, static_dir=static_dir, progress=False)
    assert np.array_equal(again.encode(PROMPTS), first) and again.encode_calls == 0  # from the disk cache
    torch_vecs = Embedder(cache_dir=tmp_path, progress=False).encode(PROMPTS)
    assert static.cache_key != "sentence-transformers/all-MiniLM-L6-v2"
    assert not np.allclose(torch_vecs, first, atol=0.05)  # other vectors, cached apart
    # related prompts stay closer than unrelated ones
    a, b, c = static.encode(["How do I sort a list in Python?", "Sorting a Python list", "Best pasta recipe"])
    assert a @ b > a @ c


def test_the_cached_model_loads_as_model2vec_loads_it_without_its_hub_machinery(static_dir):
    from model2vec import StaticModel

    (path,) = [p for p in static_dir.iterdir() if not p.name.startswith(".")]
    code = ("import sys; from pathlib import Path; from env.static_embedder import load_static; "
            f"m = load_static(Path({str(path)!r})); print(m.dim, m.normalize, "
            "any(k.startswith(('model2vec.persistence', 'model2vec.modelcards')) for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["384", "True", "False"]
    from env.static_embedder import load_static

    ours, theirs = load_static(path), StaticModel.from_pretrained(path, force_download=False)
    texts = [*PROMPTS, "x" * 5000, ""]
    assert np.array_equal(ours.encode(texts), theirs.encode(texts)) and ours.config == theirs.config


def test_each_distillation_has_its_own_model_and_vectors_and_a_policy_keeps_its_own(tmp_path):
    """A new distillation must not serve a policy trained on an older one: each version distils into
    its own directory and caches its vectors under its own key; a policy records its version (none
    recorded: 1), and its config, read back for eval or retraining, asks for it."""
    from contract.errors import UserError
    from contract.policy_meta import EmbeddingMeta
    from env.embedder import resolve_model_path
    from env.encoders import make_embedder
    from env.static_embedder import DISTILL_VERSION, DISTILLATIONS, static_path
    from training.config import checkpoint_config

    assert DISTILL_VERSION == max(DISTILLATIONS) == 2 and DISTILLATIONS[1]["sif_coefficient"] == 1e-4
    newest, first = make_embedder("static", cache_dir=tmp_path), make_embedder("static", static_version=1)
    assert (newest.version, first.version) == (DISTILL_VERSION, 1)
    assert newest.cache_key.endswith(f"#static-{DISTILL_VERSION}") and first.cache_key.endswith("#static-1")
    model_path = Path(resolve_model_path(newest.model_name))
    paths = {static_path(model_path, newest.model_id, tmp_path, v) for v in DISTILLATIONS}
    assert len(paths) == len(DISTILLATIONS)
    with pytest.raises(UserError, match="static distillation 7 is not known") as err:
        make_embedder("static", static_version=7)
    assert "\n" not in str(err.value)
    assert EmbeddingMeta(model="m", dim=4, encoder="static").distillation == 1
    assert EmbeddingMeta(model="m", dim=4, encoder="static", static_version=2).distillation == 2
    assert EmbeddingMeta(model="m", dim=4).distillation is None
    from policy.checkpoint import load_checkpoint
    from tests.harness import make_checkpoint

    policy = load_checkpoint(make_checkpoint(tmp_path / "ck", vectors="static"))
    policy.meta.embedding = policy.meta.embedding.model_copy(update={"static_version": None})  # an older policy
    policy.meta.training = {"data": {"prompts": str(ROOT / "data/llmrouter-dc/prompts.jsonl.gz"),
                                     "agents": str(ROOT / "data/llmrouter-dc/agents.json")},
                            "embed": {"encoder": "static"}}
    assert checkpoint_config(policy.meta).embed.static_version == 1


def test_a_policy_refuses_an_encoder_it_was_not_trained_for():
    from contract.errors import UserError
    from env.encoders import check_vectors

    check_vectors("transformer", "onnx-int8", "policy v")
    check_vectors("static", "static", "policy v")
    for trained, encoder in (("transformer", "static"), ("static", "torch"), ("static", "onnx")):
        with pytest.raises(UserError) as err:
            check_vectors(trained, encoder, "policy v")
        assert "\n" not in str(err.value) and f"trained on {trained} embeddings" in str(err.value)


def test_train_and_serve_on_static_embeddings(static_dir, tmp_path, start_server, checkpoint, embed_cache,
                                              shipped_paths):
    prompts, agents = shipped_paths
    out = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--quiet", "-s", f"data.prompts={prompts}",
         "-s", f"data.agents={agents}", "-s", "data.limit=600", "-s", f"embed.cache_dir={embed_cache}",
         "-s", "embed.encoder=static",
         "-s", f"embed.static_dir={static_dir}", "-s", f"out_dir={tmp_path / 'run'}",
         "-s", f"checkpoint_dir={tmp_path / 'checkpoints'}", "-s", "device=cpu", "-s", "network.hidden=[64,64]",
         "-s", "ppo.total_steps=480", "-s", "env.num_worlds=64", "-s", "tensorboard=false"],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr
    from env.static_embedder import DISTILL_VERSION
    from policy.checkpoint import load_checkpoint

    policy = load_checkpoint(tmp_path / "checkpoints")
    assert policy.meta.embedding.encoder == "static" and policy.meta.embedding.static_version == DISTILL_VERSION
    server = start_server({"ROUTER_CHECKPOINT": str(tmp_path / "checkpoints"), "ROUTER_STATIC_DIR": str(static_dir),
                           "ROUTER_SQLITE_PATH": str(tmp_path / "exp.sqlite3")}).wait_ready()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for prompt in [*PROMPTS, *(f"{p} (again, {i})" for i in range(5) for p in PROMPTS[:1])]:
            assert c.post("/v1/route", json={"prompt": prompt}).json()["agent"] in policy.agents
        assert 'router_encoder_info{encoder="static"}' in c.get("/metrics").text
    # measured far under ROUTER_INLINE_ENCODE_MS (1 ms) a prompt, the static model encodes in the loop
    assert "static encodes in the event loop" in server.log()
    # the MiniLM policy under the static encoder: the server does not start, and says why in one line
    refused = start_server({"ROUTER_CHECKPOINT": str(checkpoint), "ROUTER_ENCODER": "static",
                            "ROUTER_STATIC_DIR": str(static_dir)})
    assert refused.wait_exit() != 0
    lines = [line for line in refused.log().splitlines() if "trained on transformer embeddings" in line]
    assert lines and "ROUTER_ENCODER=torch" in lines[0]
    assert "Traceback" not in refused.log()
