"""Serving latency and throughput, torch, ONNX int8 and static embeddings side by side: raw encoding
in-process, then the real server over HTTP, on the same prompts.

For each encoder of ``--encoders`` (``ROUTER_ENCODER``; default ``torch,onnx-int8,static``) one run measures:

1. the real server (``uvicorn router.app:create_app`` in a subprocess, on a free port) is started;
   its pass size (``ROUTER_ENCODE_BATCH=auto``: measured at its start-up) and encode threads
   (``ROUTER_ENCODE_THREADS``) are read from /metrics;
2. raw ``encode`` of the same encoder in this process, with the server's torch threads: throughput
   of batches of 64 (prompts/s, from the median batch; as one padded pass, sorted by length in
   passes of the server's size, one at a time, and one at a time in as many threads at once as the
   server's encode threads), and latency of one prompt (batch 1, median ms), paired with the
   concurrency-1 run: each request is preceded by a raw encode of the same prompt, so both see the
   same load on a shared machine;
3. ``POST /v1/route`` over HTTP with httpx async clients at concurrency 1, 16 and 64 (one client of
   one kept-alive connection per concurrent user: one pool of 64 connections cost the client a core by
   itself): p50, p99 (ms) and requests/s, every request with a prompt not sent before (the LRU cache
   does not help), and the mean micro-batch size (from the server's /metrics); at concurrency 1 also
   the server's own p50 (``latency_ms`` of its access log: outermost middleware to response sent),
   the rest of the client's p50 outside it (the client, the connection, uvicorn's HTTP parsing), and
   the p50 of each stage of the decision in the access log's ``stages_ms`` (embed, encode, state,
   policy, store, lease: docs/serving.md, "Where a request spends its time"); each prompt also goes,
   right beside it, to a uvicorn server that answers at once (``benchmarks/null_server.py``), whose
   p50 is the floor that the client, the connection and uvicorn set under the same conditions
   (reported beside the goal), and with ``--ab-env`` to a second router with other settings (an A/B
   in one run);
4. one prompt repeated (LRU cache hits: the server's own overhead), at concurrency 1 and 64;
5. with ``--proxy`` (the default), the OpenAI-compatible proxy: the local calculator agent
   (``agent-router agents serve --model calculator``, answering at once) called directly, the same
   through ``POST /v1/chat/completions`` (every agent of the policy has it as its upstream), and
   ``POST /v1/route`` beside them, at concurrency 1 (interleaved) and 16: p50 and p99 of each, the
   proxy's overhead (proxied - direct) and that overhead minus the routing decision's own p50.

Goals (issue 14 and 13), printed as ratios: concurrency-1 p50 within raw batch-1 encode + 3 ms;
throughput at concurrency 16 and 64 at least 0.9 of the best raw in-process rate (of the four of
step 2), and never falling as concurrency rises
(1 -> 16 -> 64, within 3%); ONNX int8 at the top concurrency at least 2x torch and at least
150 req/s; the proxy's overhead at most 5 ms over the routing decision; (issue 23) static at
concurrency 16 at least 3x the fastest ONNX encoder, a restart to ``/readyz`` with every cache
warm in at most 3 s (median of ``--restarts``, each timed from launching the process; the start-up
measurements are read from ``var/plans``, which the first start wrote), and from concurrency 16 to 64
a fall in throughput of at most the load generator's own share of the cores at 64 (this process's
CPU time over the run's wall time, over the cores: ``client_share``).

The prompts are the shipped dataset's (``data/llmrouter-dc``, distinct texts, shuffled with
``--seed``), else generated ones. The server logs to SQLite in a temporary directory (``--redis-url``:
to Redis, under a unique key prefix deleted afterwards). The client runs on the same machine as
the server, so they share its cores.

Usage::

    .venv/bin/python benchmarks/serve_latency.py [--encoders torch,onnx-int8] [--redis-url redis://127.0.0.1:6379/0]

Prints a table, then as its last line one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import itertools
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

try:  # httpcore imports sniffio on every request; absent, each failed import scans sys.path (~2 ms here)
    import sniffio  # noqa: F401
except ImportError:
    sys.modules["sniffio"] = None  # type: ignore[assignment]  # fails at once: httpcore falls back to asyncio

import httpx  # noqa: E402

from benchmarks.common import machine, print_json_line, print_table  # noqa: E402
from env.encoders import vectors_of  # noqa: E402
from tests.harness import Server, make_checkpoint  # noqa: E402

DATASET = ROOT / "data" / "llmrouter-dc" / "prompts.jsonl.gz"
C1_GOAL_MS = 3.0
SCALE_GOAL_RATIO = 0.9  # throughput at c=16 and 64 over the best raw in-process rate (issue 14)
ONNX_SPEEDUP_GOAL = 2.0  # onnx-int8 over torch throughput at the top concurrency
ONNX_RPS_GOAL = 150.0
PROXY_GOAL_MS = 5.0  # the proxy over the routing decision (issue 13)
STATIC_SPEEDUP_GOAL = 3.0  # static over the fastest ONNX encoder's throughput at concurrency 16 (issue 23)
RESTART_GOAL_S = 3.0  # median restart to /readyz with every cache warm (issue 23)


# --- inputs ----------------------------------------------------------------------------------


def load_prompts(count: int, seed: int, max_chars: int) -> tuple[list[str], str]:
    """``count`` distinct prompts (dataset, else generated), shuffled; and where they came from."""
    texts: list[str] = []
    if DATASET.is_file():
        seen: set[str] = set()
        with gzip.open(DATASET, "rt", encoding="utf-8") as f:
            for line in f:
                text = json.loads(line)["prompt"][:max_chars]
                if text.strip() and text not in seen:
                    seen.add(text)
                    texts.append(text)
        source = f"{DATASET.relative_to(ROOT)} ({len(texts)} distinct)"
    else:
        source = "generated"
    random.Random(seed).shuffle(texts)
    words = ("sort", "parse", "prove", "translate", "summarise", "explain", "debug", "price", "plan", "draft")
    things = ("a list", "this contract", "the integral of x^2", "a SQL join", "a poem", "my symptoms", "the news")
    i = 0
    while len(texts) < count:  # top up with generated prompts when the dataset is short or absent
        rng = random.Random(seed * 1_000_003 + i)
        texts.append(f"Request {i}: please {rng.choice(words)} {rng.choice(things)} "
                     + " ".join(rng.choice(words) for _ in range(rng.randint(3, 40))))
        i += 1
    return texts[:count], source


# --- raw encoding ----------------------------------------------------------------------------


def raw_embedder(encoder: str, threads: int, warm: list[str]):
    """The in-process embedder of ``encoder`` (``torch``, ``onnx-int8``, ``onnx-fp32`` or ``static``;
    all-MiniLM-L6-v2 on CPU, ``threads`` threads, ONNX exports in ``var/onnx``, static models in
    ``var/static`` and torch's TorchScript trace in ``var/torchscript``, as the server's), warmed up."""
    import torch

    from env.encoders import make_embedder

    torch.set_num_threads(threads)
    embedder = make_embedder(encoder, device="cpu", progress=False, onnx_dir=ROOT / "var" / "onnx", threads=threads,
                             static_dir=ROOT / "var" / "static", trace_dir=ROOT / "var" / "torchscript")
    embedder.encode(warm)
    for p in warm[:5]:
        embedder.encode([p])
    return embedder


def raw_b64(embedder, prompts: list[str], sub_batch: int, threads: int) -> dict[str, float]:
    """Throughput (prompts/s, from the median batch of 64) of ``encode``, up to four ways, interleaved:
    one forward pass of 64 (every prompt padded to the longest); sorted by length in passes of
    ``sub_batch`` (the server's measured pass size); one prompt at a time (the total time of the 64,
    not 1000 / the median latency, which long prompts would flatter); and, when ``threads`` > 1 (the
    server's encode threads), one prompt at a time in that many threads at once.
    """
    sizes = sorted({64, sub_batch, 1})
    times: dict[int, list[float]] = {size: [] for size in sizes}
    threaded: list[float] = []
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    for i in range(0, len(prompts) - 63, 64):
        batch = prompts[i : i + 64]
        for size in sizes:
            embedder.batch_size = size
            start = time.perf_counter()
            embedder.encode(batch)
            times[size].append(time.perf_counter() - start)
        if pool is not None:
            embedder.batch_size = 1
            start = time.perf_counter()
            list(pool.map(lambda text: embedder.encode([text]), batch))
            threaded.append(time.perf_counter() - start)
    if pool is not None:
        pool.shutdown()
    embedder.batch_size = 64
    out = {"raw_encode_b64_per_s": 64 / statistics.median(times[64]),
           "raw_encode_b64_batch_ms": statistics.median(times[64]) * 1000, "raw_b64_batches": len(times[64])}
    for size in sizes:
        if size != 64:
            out[f"raw_encode_b64_sub{size}_per_s"] = 64 / statistics.median(times[size])
    if threaded:
        out[f"raw_encode_b64_threads{threads}_per_s"] = 64 / statistics.median(threaded)
    return out


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: how shared the machine was."""
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- the server ------------------------------------------------------------------------------


def route_call(client: httpx.AsyncClient, prompt: str) -> Awaitable[httpx.Response]:
    return client.post("/v1/route", json={"prompt": prompt})


def chat_call(model: str, path: str = "/v1/chat/completions") -> Callable[[httpx.AsyncClient, str],
                                                                         Awaitable[httpx.Response]]:
    """A chat completion of ``model`` at ``path`` (the proxy's, or the upstream's own)."""
    def call(client: httpx.AsyncClient, prompt: str) -> Awaitable[httpx.Response]:
        return client.post(path, json={"model": model, "messages": [{"role": "user", "content": prompt}]})
    return call


async def load_level(url: str, prompts: list[str], concurrency: int, warmup: list[str],
                     call: Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]] = route_call,
                     ) -> dict[str, float]:
    """Send every prompt with ``call`` (default ``POST /v1/route``) from ``concurrency`` clients;
    latency, throughput, and ``retried``: requests sent again after a transport error (a kept-alive
    connection the server closed as it was reused: uvicorn closes one idle for 5 s; the latency
    counts both tries). A second transport error ends the run."""
    retried = 0
    # one client of one connection per worker, as separate users would be: with one pool of 64
    # connections the client spent about 5 times the CPU per request it spent with 16, a whole core
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=120.0, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)))
            for _ in range(concurrency)]

        async def worker(client: httpx.AsyncClient, queue: list[str], out: list[float] | None) -> None:
            nonlocal retried
            while queue:
                prompt = queue.pop()
                start = time.perf_counter()
                try:
                    r = await call(client, prompt)
                except httpx.TransportError:
                    retried += 1
                    r = await call(client, prompt)
                took = time.perf_counter() - start
                if r.status_code != 200:
                    raise RuntimeError(f"{r.request.url.path} answered {r.status_code}: {r.text[:200]}")
                if out is not None:
                    out.append(took)

        warm = list(warmup)
        await asyncio.gather(*(worker(client, warm, None) for client in clients))  # opens the connections
        queue = list(reversed(prompts))
        latencies: list[float] = []
        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(client, queue, latencies) for client in clients))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "rps": len(latencies) / wall,
        "requests": len(latencies),
        "retried": retried,
        # the load generator's own share of the machine's cores (this process's CPU time over the run)
        "client_share": cpu / (wall * (os.cpu_count() or 1)),
    }


async def paired_c1(url: str, prompts: list[str], embedder, warmup: list[str],
                    beside: dict[str, str] | None = None) -> dict[str, float]:
    """Concurrency 1, each request paired with a raw in-process encode of the same prompt just before it.

    On a shared machine the load drifts; pairing makes the raw batch-1 figure and the server's
    figure see the same conditions (the server is idle while the raw encode runs). ``beside``
    (name -> base URL): other servers that get the same prompt right after, in an order that
    rotates with each prompt (the null server of :func:`null_server`, an A/B server); their p50s
    are ``<name>_p50_ms``.
    """
    beside = beside or {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {"": await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=120.0))}
        for name, other in beside.items():
            clients[name] = await stack.enter_async_context(httpx.AsyncClient(base_url=other, timeout=120.0))
        for client in clients.values():
            for prompt in warmup:
                (await client.post("/v1/route", json={"prompt": prompt})).raise_for_status()
        raw: list[float] = []
        served: dict[str, list[float]] = {name: [] for name in clients}
        wall = 0.0
        for i, prompt in enumerate(prompts):
            start = time.perf_counter()
            embedder.encode([prompt])
            raw.append(time.perf_counter() - start)
            names = list(clients)
            for name in names[i % len(names):] + names[:i % len(names)]:
                start = time.perf_counter()
                r = await clients[name].post("/v1/route", json={"prompt": prompt})
                served[name].append(time.perf_counter() - start)
                if r.status_code != 200:
                    raise RuntimeError(f"POST /v1/route answered {r.status_code}: {r.text[:200]}")
            wall += served[""][-1]
    out = {
        "raw_b1_ms": statistics.median(raw) * 1000,
        "raw_b1_p99_ms": percentile(raw, 99) * 1000,
        "p50_ms": statistics.median(served[""]) * 1000,
        "p99_ms": percentile(served[""], 99) * 1000,
        "rps": len(served[""]) / wall,
        "requests": len(served[""]),
        "paired_overhead_ms": statistics.median([s - r for s, r in zip(served[""], raw, strict=True)]) * 1000,
    }
    for name in beside:
        out[f"{name}_p50_ms"] = statistics.median(served[name]) * 1000
    return out


@contextlib.contextmanager
def null_server() -> Iterator[str]:
    """A uvicorn server of ``benchmarks/null_server.py``, which answers at once: its base URL. The
    client's p50 against it is the floor of every concurrency-1 p50 that the client, the loopback
    connection and uvicorn set, which no server's request path can go below."""
    from tests.harness import free_port, stop_process

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "benchmarks.null_server:app", "--host", "127.0.0.1",
                             "--port", str(port), "--no-access-log", "--log-level", "warning"], cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                httpx.get(url, timeout=1.0)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        stop_process(proc)


def server_route_p50(log_path: Path, offset: int, last: int) -> dict[str, float]:
    """The server's own median times for the last ``last`` ``POST /v1/route`` requests logged after
    byte ``offset`` of its log: ``server_p50_ms``, the access log's ``latency_ms`` (from the outermost
    middleware receiving the request to the response sent: no HTTP client, no connection, no parsing
    of the request line), and ``stage_<name>_p50_ms`` for each stage of its ``stages_ms`` (embed,
    encode, state, policy, store, lease; docs/serving.md); NaN for the latency when the log holds
    none (another ``ROUTER_LOG_FORMAT`` or level)."""
    with log_path.open("rb") as fh:
        fh.seek(offset)
        lines = fh.read().decode("utf-8", "replace").splitlines()
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("endpoint") == "/v1/route" and "latency_ms" in entry:
            entries.append(entry)
    entries = entries[-last:]
    out = {"server_p50_ms": statistics.median(float(e["latency_ms"]) for e in entries) if entries else float("nan")}
    stages: dict[str, list[float]] = {}
    for e in entries:
        for stage, ms in (e.get("stages_ms") or {}).items():
            stages.setdefault(stage, []).append(float(ms))
    for stage, values in stages.items():
        out[f"stage_{stage}_p50_ms"] = statistics.median(values)
    return out


async def proxy_overhead(router_url: str, agents_url: str, prompts: list[str], concurrency: int,
                         warmup: list[str]) -> dict[str, float]:
    """The proxy's cost: the same upstream (the local calculator agent) called directly and through
    ``POST /v1/chat/completions`` (model ``router``), and ``POST /v1/route`` alone, on a third each of
    ``prompts`` (new to the server). At concurrency 1 the three calls are interleaved prompt by prompt
    so they see the same load; above, each runs as its own level."""
    direct = chat_call("calculator")
    proxied = chat_call("router")
    thirds = [prompts[i::3] for i in range(3)]
    if concurrency > 1:
        d = await load_level(agents_url, thirds[0], concurrency, warmup, direct)
        p = await load_level(router_url, thirds[1], concurrency, warmup, proxied)
        r = await load_level(router_url, thirds[2], concurrency, warmup, route_call)
        return {"direct_p50_ms": d["p50_ms"], "direct_p99_ms": d["p99_ms"], "proxied_p50_ms": p["p50_ms"],
                "proxied_p99_ms": p["p99_ms"], "route_p50_ms": r["p50_ms"], "route_p99_ms": r["p99_ms"],
                "proxied_rps": p["rps"]}
    times: dict[str, list[float]] = {"direct": [], "proxied": [], "route": []}
    async with httpx.AsyncClient(base_url=agents_url, timeout=120.0) as up, \
            httpx.AsyncClient(base_url=router_url, timeout=120.0) as server:
        for prompt in warmup:
            (await direct(up, prompt)).raise_for_status()
            (await proxied(server, prompt)).raise_for_status()
        for a, b, c in zip(*thirds, strict=False):
            for name, client, call, prompt in (("direct", up, direct, a), ("proxied", server, proxied, b),
                                               ("route", server, route_call, c)):
                start = time.perf_counter()
                r = await call(client, prompt)
                times[name].append(time.perf_counter() - start)
                if r.status_code != 200:
                    raise RuntimeError(f"{name} call answered {r.status_code}: {r.text[:200]}")
    out = {}
    for name, values in times.items():
        out[f"{name}_p50_ms"] = statistics.median(values) * 1000
        out[f"{name}_p99_ms"] = percentile(values, 99) * 1000
    return out


def gauge(metrics: str, name: str, default: int) -> int:
    """The gauge ``name`` (e.g. ``router_encode_pass_size``, measured at start-up) in the /metrics text."""
    m = re.search(rf"^{name} ([0-9.]+)$", metrics, re.M)
    return int(float(m.group(1))) if m else default


def encoder_of(metrics: str) -> str:
    """What runs the server's embedding model (``router_encoder_info`` in the /metrics text)."""
    m = re.search(r'^router_encoder_info\{encoder="([^"]+)"\}', metrics, re.M)
    if m is None:
        raise SystemExit("error: the server's /metrics has no router_encoder_info")
    return m.group(1)


def scrape_batches(url: str) -> tuple[float, float]:
    """``(router_embed_batch_size_sum, router_embed_batch_size_count)`` from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=30).text
    values = {}
    for name in ("router_embed_batch_size_sum", "router_embed_batch_size_count"):
        m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
        values[name] = float(m.group(1)) if m else float("nan")
    return values["router_embed_batch_size_sum"], values["router_embed_batch_size_count"]


# --- main ------------------------------------------------------------------------------------


def measure_encoder(encoder: str, args: argparse.Namespace, prompts: list[str], levels: list[int],
                    work: Path, prefix: str, floor_url: str) -> dict[str, Any]:
    """Everything the module docstring lists, for one encoder, on ``prompts`` in the same order
    (``floor_url``: the :func:`null_server`)."""
    per_level = {c: (max(args.requests // 3, 50) if c == 1 else args.requests) for c in levels}
    warm_per_level = {c: max(2 * c, 10) for c in levels}
    cursor = 0

    def take(n: int) -> list[str]:
        nonlocal cursor
        cursor += n
        return prompts[cursor - n : cursor]

    warm_raw, raw_prompts = take(64), take(args.raw_b64 * 64)
    server: Server | None = None
    agents = None
    proxy: dict[int, dict[str, float]] = {}
    own = work / encoder
    own.mkdir(parents=True, exist_ok=True)
    try:
        # a fresh policy trained on the vectors this encoder gives (static ones for static)
        checkpoint = args.checkpoint or make_checkpoint(work / f"checkpoints-{vectors_of(encoder)}",
                                                        vectors=vectors_of(encoder))
        env = {"ROUTER_CHECKPOINT": str(checkpoint), "ROUTER_TORCH_THREADS": str(args.torch_threads),
               "ROUTER_ENCODE_BATCH": args.encode_batch, "ROUTER_ENCODER": encoder,
               "ROUTER_ONNX_DIR": str(ROOT / "var" / "onnx"), "ROUTER_STATIC_DIR": str(ROOT / "var" / "static"),
               "ROUTER_SQLITE_PATH": str(own / "experience.sqlite3"),
               "ROUTER_OUTBOX_PATH": str(own / "outbox.sqlite3")}
        if args.redis_url:
            env.update({"ROUTER_REDIS_URL": args.redis_url, "ROUTER_REDIS_PREFIX": f"{prefix}-{encoder}"})
        if args.proxy:  # every agent of the policy answers through the same upstream: the local calculator
            from policy.checkpoint import read_meta, resolve_checkpoint
            from tests.agents_harness import AgentsServer

            agents = AgentsServer(["calculator"], own / "agents.log").start()
            names = read_meta(resolve_checkpoint(checkpoint)).agents
            (own / "upstreams.json").write_text(json.dumps(
                {"agents": {n: {"base_url": agents.url, "model": "calculator"} for n in names}}))
            env.update({"ROUTER_UPSTREAMS_FILE": str(own / "upstreams.json"), "ROUTER_PROXY_OPEN": "true"})
        for item in args.server_env:
            key, _, val = item.partition("=")
            env[key] = val
        if args.workers > 1:
            env["ROUTER_WORKERS"] = str(args.workers)
        server = Server(env=env, log_path=own / "server.log",
                        uvicorn_args=["--workers", str(args.workers)] if args.workers > 1 else []).start()
        try:
            server.wait_ready(timeout_s=300.0)
        except AssertionError as exc:
            raise SystemExit(f"error: {str(exc)[-3000:]}") from None
        metrics = httpx.get(f"{server.url}/metrics", timeout=30).text
        pass_size = gauge(metrics, "router_encode_pass_size", 8)
        threads = gauge(metrics, "router_encode_threads", 1)
        runs = encoder_of(metrics)  # with ROUTER_ENCODER=onnx, the export the server chose
        embedder = raw_embedder(runs, args.torch_threads, warm_raw)  # the server idles meanwhile
        raw = raw_b64(embedder, raw_prompts, pass_size, threads)
        raw["pass_size"], raw["encode_threads"], raw["runs"] = pass_size, threads, runs
        print(f"{encoder}: raw batch 64 {raw['raw_encode_b64_per_s']:.1f} prompts/s, in sorted passes of "
              f"{pass_size} (the server's) {raw[f'raw_encode_b64_sub{pass_size}_per_s']:.1f}", file=sys.stderr)
        results: dict[int, dict[str, float]] = {}
        for c in levels:
            warm, batch = take(warm_per_level[c]), take(per_level[c])
            sum0, count0 = scrape_batches(server.url)
            if c == 1:
                log_from = (own / "server.log").stat().st_size
                beside, ab = {"floor": floor_url}, None
                if args.ab_env:  # the same server with other settings, beside it on the same prompts
                    ab_env = env | {"ROUTER_SQLITE_PATH": str(own / "ab.sqlite3"),
                                    "ROUTER_OUTBOX_PATH": str(own / "ab-outbox.sqlite3")}
                    if args.redis_url:
                        ab_env["ROUTER_REDIS_PREFIX"] = f"{prefix}-{encoder}-ab"
                    ab_env |= dict(item.partition("=")[::2] for item in args.ab_env)
                    ab = Server(env=ab_env, log_path=own / "ab.log").start()
                    beside["ab"] = ab.wait_ready(timeout_s=300.0).url
                try:
                    results[c] = asyncio.run(paired_c1(server.url, batch, embedder, warm, beside))
                finally:
                    if ab is not None:
                        ab.stop()
                results[c].update(server_route_p50(own / "server.log", log_from, len(batch)))
                if ab is not None:
                    ab_p50 = server_route_p50(own / "ab.log", 0, len(batch))
                    results[c].update({f"ab_{k}": v for k, v in ab_p50.items()})
                raw["raw_encode_b1_ms"] = results[c]["raw_b1_ms"]
                raw["raw_encode_b1_p99_ms"] = results[c]["raw_b1_p99_ms"]
            else:
                results[c] = asyncio.run(load_level(server.url, batch, c, warm))
            sum1, count1 = scrape_batches(server.url)
            results[c]["mean_batch"] = (sum1 - sum0) / max(count1 - count0, 1)
            print(f"{encoder} c={c}: p50 {results[c]['p50_ms']:.2f} ms, p99 {results[c]['p99_ms']:.2f} ms, "
                  f"{results[c]['rps']:.1f} req/s", file=sys.stderr)
        same = f"repeated prompt {uuid.uuid4().hex}"
        repeat = {c: asyncio.run(load_level(server.url, [same] * args.repeat_requests, c, [same]))
                  for c in (1, max(levels))}
        if agents is not None:
            agents.wait_ready(timeout_s=120.0)
            for c in (1, 16):
                proxy[c] = asyncio.run(proxy_overhead(server.url, agents.url.removesuffix("/v1"),
                                                      take(args.proxy_requests), c, take(32)))
                proxy[c]["overhead_p50_ms"] = proxy[c]["proxied_p50_ms"] - proxy[c]["direct_p50_ms"]
                proxy[c]["overhead_p99_ms"] = proxy[c]["proxied_p99_ms"] - proxy[c]["direct_p99_ms"]
                proxy[c]["over_route_p50_ms"] = proxy[c]["overhead_p50_ms"] - proxy[c]["route_p50_ms"]
    finally:
        if agents is not None:
            agents.stop()
        if server is not None:
            server.stop()
    restarts = restart_seconds(env, own, args.restarts) if args.restarts else []
    if restarts:
        print(f"{encoder}: restart to /readyz, median of {len(restarts)}: {statistics.median(restarts):.2f} s",
              file=sys.stderr)
    return {"raw": raw, "results": results, "repeat": repeat, "proxy": proxy, "restarts": restarts}


def restart_seconds(env: dict[str, str], log_dir: Path, times: int) -> list[float]:
    """Seconds from launching the server process to its first ``200`` from ``GET /readyz`` (polled
    every 20 ms), ``times`` times in a row, with every cache warm (the first start made them)."""
    out = []
    for i in range(times):
        server = Server(env=env, log_path=log_dir / f"restart-{i}.log")
        server.poll_s = 0.02
        start = time.monotonic()
        try:
            server.start().wait_ready(timeout_s=300.0, path="/readyz")
            out.append(time.monotonic() - start)
        except AssertionError as exc:
            raise SystemExit(f"error: restart {i}: {str(exc)[-2000:]}") from None
        finally:
            server.stop()
    return out


def encoder_figures(encoder: str, m: dict[str, Any], levels: list[int]) -> dict[str, Any]:
    """The flat figures and goal ratios of one encoder."""
    raw, results = m["raw"], m["results"]
    best_raw = max(v for k, v in raw.items() if k.startswith("raw_encode_b64") and k.endswith("_per_s"))
    f: dict[str, Any] = {f"{encoder}_{k}": v for k, v in raw.items()}
    f[f"{encoder}_best_raw_per_s"] = best_raw
    for c in levels:
        for key in ("p50_ms", "p99_ms", "rps", "mean_batch", "requests", "retried", "client_share"):
            f[f"{encoder}_c{c}_{key}"] = results[c].get(key, 0)
    for c, res in m["repeat"].items():
        for key in ("p50_ms", "p99_ms", "rps"):
            f[f"{encoder}_repeat_c{c}_{key}"] = res[key]
    for c, res in m["proxy"].items():
        for key, value in res.items():
            f[f"{encoder}_proxy_c{c}_{key}"] = value
        f[f"{encoder}_proxy_c{c}_goal_met"] = res["over_route_p50_ms"] <= PROXY_GOAL_MS
    if 1 in results:
        f[f"{encoder}_c1_overhead_ms"] = results[1]["p50_ms"] - raw["raw_encode_b1_ms"]
        f[f"{encoder}_c1_paired_overhead_ms"] = results[1]["paired_overhead_ms"]
        f[f"{encoder}_c1_server_p50_ms"] = results[1]["server_p50_ms"]
        f[f"{encoder}_c1_outside_server_ms"] = results[1]["p50_ms"] - results[1]["server_p50_ms"]
        for key, value in results[1].items():
            if key.startswith("stage_"):
                f[f"{encoder}_c1_{key}"] = value
        f[f"{encoder}_c1_goal_met"] = f[f"{encoder}_c1_overhead_ms"] <= C1_GOAL_MS
        f[f"{encoder}_c1_floor_p50_ms"] = results[1]["floor_p50_ms"]
        f[f"{encoder}_c1_overhead_net_ms"] = f[f"{encoder}_c1_overhead_ms"] - results[1]["floor_p50_ms"]
        f[f"{encoder}_c1_net_goal_met"] = f[f"{encoder}_c1_overhead_net_ms"] <= C1_GOAL_MS
        if "ab_p50_ms" in results[1]:
            f[f"{encoder}_ab_c1_p50_ms"] = results[1]["ab_p50_ms"]
            f[f"{encoder}_ab_c1_overhead_ms"] = results[1]["ab_p50_ms"] - raw["raw_encode_b1_ms"]
            for key, value in results[1].items():
                if key.startswith("ab_") and key != "ab_p50_ms":
                    f[f"{encoder}_ab_c1_{key.removeprefix('ab_')}"] = value
    for c in levels:
        if c > 1:
            f[f"{encoder}_c{c}_over_best_raw"] = results[c]["rps"] / best_raw
            f[f"{encoder}_c{c}_goal_met"] = f[f"{encoder}_c{c}_over_best_raw"] >= SCALE_GOAL_RATIO
    if m["restarts"]:
        f[f"{encoder}_restart_s"] = m["restarts"]
        f[f"{encoder}_restart_median_s"] = statistics.median(m["restarts"])
        f[f"{encoder}_restart_goal_met"] = f[f"{encoder}_restart_median_s"] <= RESTART_GOAL_S
    rates = [results[c]["rps"] for c in sorted(levels)]
    f[f"{encoder}_never_falls"] = all(b >= a * 0.97 for a, b in itertools.pairwise(rates))
    if 16 in results and 64 in results:  # issue 23: from 16 to 64, no more fall than the load generator's share
        fall = 1.0 - results[64]["rps"] / results[16]["rps"]
        f[f"{encoder}_fall_16_to_64"] = fall
        f[f"{encoder}_fall_goal_met"] = fall <= results[64]["client_share"]
    return f


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, help="Policy to serve (default: a fresh 9-agent one).")
    parser.add_argument("--redis-url", help="Log experience to this Redis (default: SQLite in a temp dir).")
    parser.add_argument("--encoders", default="torch,onnx-int8,static",
                        help="Comma-separated encoders (ROUTER_ENCODER: torch, onnx, onnx-int8, onnx-fp32, static).")
    parser.add_argument("--concurrency", default="1,16,64", help="Comma-separated client counts.")
    parser.add_argument("--requests", type=int, default=600,
                        help="Requests per concurrency level (c=1: a third, each paired with a raw encode).")
    parser.add_argument("--raw-b64", type=int, default=4, help="Batches of 64 encoded in-process.")
    parser.add_argument("--repeat-requests", type=int, default=300, help="Requests of the repeated-prompt runs.")
    parser.add_argument("--max-chars", type=int, default=2000, help="Prompts are cut to this many characters.")
    parser.add_argument("--torch-threads", type=int, default=1, help="ROUTER_TORCH_THREADS, also used for raw.")
    parser.add_argument("--encode-batch", default="auto",
                        help="ROUTER_ENCODE_BATCH of the server (default auto: measured at its start-up); raw "
                             "encoding is timed in passes of the size the server uses.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn worker processes of the server (more than 1 needs --redis-url).")
    parser.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="Also measure the proxy's overhead over the same upstream (the local calculator).")
    parser.add_argument("--proxy-requests", type=int, default=300,
                        help="Requests per proxy concurrency level (a third each direct, proxied, route).")
    parser.add_argument("--restarts", type=int, default=5,
                        help="Restarts timed to /readyz per encoder, caches warm (0: none).")
    parser.add_argument("--ab-env", action="append", default=[], metavar="ROUTER_X=V",
                        help="At concurrency 1, a second server with these settings too (repeatable) gets each "
                        "prompt beside the first, in alternating order: an A/B of a setting in the same conditions.")
    parser.add_argument("--server-env", action="append", default=[], metavar="ROUTER_X=V",
                        help="Extra server settings (repeatable), e.g. ROUTER_BATCH_WINDOW_MS=1.")
    args = parser.parse_args(argv)
    load_start = load_average()
    levels = [int(c) for c in args.concurrency.split(",")]
    encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
    need = (64 + args.raw_b64 * 64 + sum(max(args.requests // 3, 50) if c == 1 else args.requests for c in levels)
            + sum(max(2 * c, 10) for c in levels) + 10 + (2 * (args.proxy_requests + 32) if args.proxy else 0))
    prompts, source = load_prompts(need, args.seed, args.max_chars)
    work = Path(tempfile.mkdtemp(prefix="serve-latency-"))
    prefix = f"bench-{uuid.uuid4().hex[:12]}"
    measured: dict[str, dict[str, Any]] = {}
    try:
        with null_server() as floor_url:
            for encoder in encoders:  # the same prompts, in the same order, for each encoder
                measured[encoder] = measure_encoder(encoder, args, prompts, levels, work, prefix, floor_url)
    finally:
        if args.redis_url:
            import redis

            with redis.Redis.from_url(args.redis_url) as r:
                keys = list(r.scan_iter(match=f"{prefix}-*", count=1000))
                if keys:
                    r.delete(*keys)
        shutil.rmtree(work, ignore_errors=True)

    figures: dict[str, Any] = {"benchmark": "serve_latency", "store": "redis" if args.redis_url else "sqlite",
                               "workers": args.workers,
                               "prompts": source,
                               "mean_prompt_chars": round(statistics.mean(len(p) for p in prompts), 1),
                               "encoders": encoders}
    for encoder, m in measured.items():
        figures |= encoder_figures(encoder, m, levels)
    top = max(levels)
    fastest_onnx = max((e for e in measured if e.startswith("onnx")), key=lambda e: figures[f"{e}_c{top}_rps"],
                       default=None)
    if "torch" in measured and fastest_onnx is not None:
        figures["onnx_encoder"] = fastest_onnx
        figures[f"onnx_over_torch_c{top}"] = figures[f"{fastest_onnx}_c{top}_rps"] / figures[f"torch_c{top}_rps"]
        figures["onnx_over_torch_goal_met"] = figures[f"onnx_over_torch_c{top}"] >= ONNX_SPEEDUP_GOAL
        figures[f"onnx_c{top}_goal_met"] = figures[f"{fastest_onnx}_c{top}_rps"] >= ONNX_RPS_GOAL
    if "static" in measured and fastest_onnx is not None and 16 in levels:  # issue 23: static >= 3x onnx at c=16
        figures["static_over_onnx_c16"] = figures["static_c16_rps"] / figures[f"{fastest_onnx}_c16_rps"]
        figures["static_over_onnx_goal_met"] = figures["static_over_onnx_c16"] >= STATIC_SPEEDUP_GOAL
    load_end = load_average()
    figures["goals"] = {"c1_overhead_ms": C1_GOAL_MS, "scale_ratio": SCALE_GOAL_RATIO, "proxy_ms": PROXY_GOAL_MS,
                        "onnx_over_torch": ONNX_SPEEDUP_GOAL, "onnx_rps": ONNX_RPS_GOAL,
                        "static_over_onnx": STATIC_SPEEDUP_GOAL, "restart_s": RESTART_GOAL_S}
    figures["machine"] = machine() | {"torch_threads": args.torch_threads, "loadavg_start": load_start,
                                      "loadavg_end": load_end}

    print(f"prompts: {source}, mean {figures['mean_prompt_chars']} chars; store: {figures['store']}; "
          f"workers {args.workers}; "
          f"threads {args.torch_threads}; load average {load_start} at the start, {load_end} at the end")
    rows: list[list[Any]] = []
    for encoder, m in measured.items():
        raw, results, size = m["raw"], m["results"], m["raw"]["pass_size"]
        label = encoder if raw["runs"] == encoder else f"{encoder} ({raw['runs']})"
        if "raw_encode_b1_ms" in raw:  # measured with concurrency 1
            rows.append([label, "raw encode, batch 1 (paired with c=1)", f"{raw['raw_encode_b1_ms']:.2f}",
                         f"{raw['raw_encode_b1_p99_ms']:.2f}", "", ""])
        rows += [
            [label, "raw encode, 64 one at a time", "", "", f"{raw['raw_encode_b64_sub1_per_s']:.1f}", ""],
            [label, "raw encode, one padded pass of 64", "", "", f"{raw['raw_encode_b64_per_s']:.1f}", ""],
            [label, f"raw encode, 64 in sorted passes of {size} (the server's)", "", "",
             f"{raw[f'raw_encode_b64_sub{size}_per_s']:.1f}", ""],
        ]
        threads = raw["encode_threads"]
        if threads > 1:
            rows.append([label, f"raw encode, 64 one at a time in {threads} threads (the server's)", "", "",
                         f"{raw[f'raw_encode_b64_threads{threads}_per_s']:.1f}", ""])
        for c in levels:
            r = results[c]
            rows.append([label, f"server, concurrency {c}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['rps']:.1f}", f"{r['mean_batch']:.1f}"])
        for c, r in m["repeat"].items():
            rows.append([label, f"server, one repeated prompt, concurrency {c}", f"{r['p50_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", f"{r['rps']:.1f}", "cache"])
        for c, r in m["proxy"].items():
            rows.append([label, f"upstream called directly, concurrency {c}", f"{r['direct_p50_ms']:.2f}",
                         f"{r['direct_p99_ms']:.2f}", "", ""])
            rows.append([label, f"the same through the proxy, concurrency {c}", f"{r['proxied_p50_ms']:.2f}",
                         f"{r['proxied_p99_ms']:.2f}", f"{r.get('proxied_rps', float('nan')):.1f}", ""])
            rows.append([label, f"POST /v1/route beside it, concurrency {c}", f"{r['route_p50_ms']:.2f}",
                         f"{r['route_p99_ms']:.2f}", "", ""])
    print_table(["encoder", "what", "p50 ms", "p99 ms", "per s", "mean batch"], rows)
    print()
    for encoder, m in measured.items():
        e = encoder
        if 1 in m["results"]:
            print(f"{e}: c=1 p50 - raw b1 = {figures[f'{e}_c1_overhead_ms']:+.2f} ms (goal <= {C1_GOAL_MS:.0f} ms): "
                  f"{'met' if figures[f'{e}_c1_goal_met'] else 'NOT met'}; of the p50, the server's own "
                  f"{figures[f'{e}_c1_server_p50_ms']:.2f} ms (its access log), outside it "
                  f"{figures[f'{e}_c1_outside_server_ms']:.2f} ms (client, connection, HTTP parsing)")
            print(f"{e}: c=1 p50 - raw b1 - the client's floor ({figures[f'{e}_c1_floor_p50_ms']:.2f} ms, the same "
                  f"prompts against a server that answers at once) = {figures[f'{e}_c1_overhead_net_ms']:+.2f} ms "
                  f"(goal <= {C1_GOAL_MS:.0f} ms on the server's path): "
                  f"{'met' if figures[f'{e}_c1_net_goal_met'] else 'NOT met'}")
            stages = {k.removeprefix(f"{e}_c1_stage_").removesuffix("_p50_ms"): v for k, v in figures.items()
                      if k.startswith(f"{e}_c1_stage_")}
            if stages:
                print(f"{e}: c=1 the server's stages, p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
            if f"{e}_ab_c1_p50_ms" in figures:
                ab_stages = {k.removeprefix(f"{e}_ab_c1_stage_").removesuffix("_p50_ms"): v for k, v in figures.items()
                             if k.startswith(f"{e}_ab_c1_stage_")}
                print(f"{e}: c=1 beside it, with {' '.join(args.ab_env)}: p50 {figures[f'{e}_ab_c1_p50_ms']:.2f} ms "
                      f"against {figures[f'{e}_c1_p50_ms']:.2f}; p50 - raw b1 {figures[f'{e}_ab_c1_overhead_ms']:+.2f} "
                      f"ms; the server's own {figures.get(f'{e}_ab_c1_server_p50_ms', float('nan')):.2f} ms; stages "
                      + ", ".join(f"{k} {v:.2f}" for k, v in ab_stages.items()))
        for c in levels:
            if c > 1:
                print(f"{e}: c={c} throughput / best raw rate ({figures[f'{e}_best_raw_per_s']:.1f}/s) = "
                      f"{figures[f'{e}_c{c}_over_best_raw']:.2f} (goal >= {SCALE_GOAL_RATIO}): "
                      f"{'met' if figures[f'{e}_c{c}_goal_met'] else 'NOT met'}")
        print(f"{e}: throughput never falls as concurrency rises: {'yes' if figures[f'{e}_never_falls'] else 'NO'}")
        if f"{e}_fall_16_to_64" in figures:
            print(f"{e}: c=16 -> 64 throughput falls {100 * figures[f'{e}_fall_16_to_64']:+.1f}%; the load generator "
                  f"used {100 * figures[f'{e}_c64_client_share']:.1f}% of the cores at c=64 "
                  f"({100 * figures[f'{e}_c16_client_share']:.1f}% at 16): "
                  f"{'met' if figures[f'{e}_fall_goal_met'] else 'NOT met'}")
        for c, r in m["proxy"].items():
            print(f"{e}: proxy c={c}: proxied - direct = p50 {r['overhead_p50_ms']:+.2f} ms, "
                  f"p99 {r['overhead_p99_ms']:+.2f} ms; over the routing decision {r['over_route_p50_ms']:+.2f} ms "
                  f"(goal <= {PROXY_GOAL_MS:.0f} ms): "
                  f"{'met' if r['over_route_p50_ms'] <= PROXY_GOAL_MS else 'NOT met'}")
    if f"onnx_over_torch_c{top}" in figures:
        e = figures["onnx_encoder"]
        print(f"{e} / torch throughput at c={top}: {figures[f'onnx_over_torch_c{top}']:.2f} "
              f"(goal >= {ONNX_SPEEDUP_GOAL:.0f}); {e} c={top}: {figures[f'{e}_c{top}_rps']:.1f} req/s "
              f"(goal >= {ONNX_RPS_GOAL:.0f})")
    print_json_line(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
