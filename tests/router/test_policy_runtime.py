"""``ROUTER_POLICY_RUNTIME``: over HTTP, a server that decides in ONNX Runtime (the default) answers
as one pinned to torch, says which it runs, and a hot-swapped policy gets its own export."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from tests.harness import AGENTS, priced_checkpoint


@pytest.fixture(scope="module")
def runtimes(start_server, tmp_path_factory):
    """The same priced policy of every trade-off served twice: by default and with torch pinned."""
    root = tmp_path_factory.mktemp("runtime")
    version = priced_checkpoint(root / "checkpoints", bias=(0.3, 0.5, -0.2, 0.1, 0.0, -0.4, 0.6, 0.2, 0.4))
    servers = {}
    for runtime in ("auto", "torch"):
        env = {"ROUTER_CHECKPOINT": str(version.parent), "ROUTER_SQLITE_PATH": str(root / f"{runtime}.sqlite3"),
               "ROUTER_OUTBOX_PATH": str(root / f"{runtime}-outbox.sqlite3"), "ROUTER_ONNX_DIR": str(root / "onnx"),
               "ROUTER_ADMIN_OPEN": "true"}
        if runtime == "torch":
            env["ROUTER_POLICY_RUNTIME"] = "torch"
        servers[runtime] = start_server(env)
    return root, version, {name: server.wait_ready() for name, server in servers.items()}


def test_onnx_runtime_answers_as_torch_and_says_so(runtimes):
    root, version, servers = runtimes
    assert f"policy {version.name} decides in onnxruntime" in servers["auto"].log()
    assert f"policy {version.name} decides in torch (ROUTER_POLICY_RUNTIME=torch)" in servers["torch"].log()
    assert len(list((root / "onnx" / "heads").iterdir())) == 1  # the torch server exported nothing
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=servers["auto"].url, timeout=30) as fast, \
            httpx.Client(base_url=servers["torch"].url, timeout=30) as slow:
        for i in range(12):
            body = {"prompt": f"prompt {i}: " + "word " * int(rng.integers(1, 400)),
                    "cost_weight": float(rng.choice([0.0, 0.5, 5.0, 50.0, 900.0]))}
            if i % 3 == 0:
                body["candidates"] = list(rng.choice(AGENTS, size=4, replace=False))
            a, b = fast.post("/v1/route", json=body), slow.post("/v1/route", json=body)
            assert a.status_code == b.status_code == 200, (a.text, b.text)
            a, b = a.json(), b.json()
            assert a["agent"] == b["agent"]
            assert a["probabilities"].keys() == b["probabilities"].keys()
            for name, p in a["probabilities"].items():
                assert p == pytest.approx(b["probabilities"][name], abs=1e-5)


def test_a_hot_swapped_policy_decides_in_its_own_export(runtimes):
    root, _, servers = runtimes
    newer = priced_checkpoint(root / "checkpoints", bias=(5, 0, 0, 0, 0, 0, 0, 0, 0))
    with httpx.Client(base_url=servers["auto"].url, timeout=60) as client:
        r = client.post("/admin/policy/reload", json={"checkpoint": newer.name})
        assert r.status_code == 200, r.text
        assert client.post("/v1/route", json={"prompt": "anything"}).json()["agent"] == AGENTS[0]
    assert f"policy {newer.name} decides in onnxruntime" in servers["auto"].log()
    assert len(list((root / "onnx" / "heads").iterdir())) == 2
