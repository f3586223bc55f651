"""The durable outbox: local validation, in-order idempotent drain, and a Redis killed mid-load."""

from __future__ import annotations

import asyncio
import json
import random
import re
import sqlite3
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest
import redis

from contract.experience import DecisionContext
from experience import (
    DuplicateFeedback,
    Outbox,
    RedisExperienceStore,
    StoreUnavailable,
    UnknownDecision,
)
from tests.harness import sample_context, sample_feedback

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


NOW = "2026-12-01T12:00:00+00:00"


def context(decision_id: str | None = None) -> DecisionContext:
    return sample_context(decision_id, agents=["a", "b"], probabilities=[0.75, 0.25], action=0, agent="a",
                          log_prob=-0.2876820724517809)


def as_json(ctx: DecisionContext, **changes) -> str:
    return json.dumps({**ctx.to_json_dict(), **changes})


def outbox_rows(path: Path, prefix: str) -> int:
    """Pending rows of ``prefix`` in the outbox file (0 when the file does not exist yet)."""
    if not path.exists():
        return 0
    conn = sqlite3.connect(path, timeout=30)
    try:
        return conn.execute("SELECT COUNT(*) FROM outbox WHERE prefix = ?", (prefix,)).fetchone()[0]
    finally:
        conn.close()


# --- the outbox on its own ---------------------------------------------------------------


def test_outbox_validates_feedback_of_the_decisions_it_holds(tmp_path):
    path = tmp_path / "sub" / "outbox.sqlite3"

    async def run():
        box = await asyncio.to_thread(Outbox, path, "p1")
        ctx, expiring = context(), context()
        await box.append_decision(ctx.decision_id, as_json(ctx), ttl_s=60)
        await box.append_decision(ctx.decision_id, as_json(ctx, agent="b"), ttl_s=60)  # kept first
        await box.append_decision(expiring.decision_id, as_json(expiring), ttl_s=0.05)
        assert await box.holds(ctx.decision_id) and not await box.holds(uuid.uuid4().hex)

        record = await box.record_feedback(ctx.decision_id, {"quality": 0.5, "feedback_at": NOW})
        assert record.to_json_dict() == {**ctx.to_json_dict(), "quality": 0.5, "cost_usd": None, "latency_ms": None,
                          "feedback_at": NOW}
        with pytest.raises(DuplicateFeedback):
            await box.record_feedback(ctx.decision_id, {"quality": 0.9, "feedback_at": NOW})
        assert await box.record_feedback(uuid.uuid4().hex, {"quality": 0.5}) is None  # not held: ask Redis
        await asyncio.sleep(0.1)
        with pytest.raises(UnknownDecision):
            await box.record_feedback(expiring.decision_id, {"quality": 0.5, "feedback_at": NOW})
        other = context()
        await box.append_decision(other.decision_id, as_json(other), ttl_s=60)
        with pytest.raises(ValueError, match="clash"):
            await box.record_feedback(other.decision_id, {"agent": "x", "quality": 0.5, "feedback_at": NOW})

        rows = await box.peek()
        assert [(r.kind, r.decision_id) for r in rows] == [
            ("decision", ctx.decision_id), ("decision", expiring.decision_id),
            ("experience", ctx.decision_id), ("decision", rows[3].decision_id)]
        assert json.loads(rows[0].payload)["agent"] == "a"
        other_prefix = await asyncio.to_thread(Outbox, path, "p2")
        assert await other_prefix.peek() == [] and await other_prefix.count() == 0
        await box.delete([rows[0].seq, rows[2].seq])
        assert await box.count() == 2
        await box.close()
        await other_prefix.close()
        with pytest.raises(StoreUnavailable):
            await box.count()

    asyncio.run(run())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_outbox_that_cannot_be_opened_is_store_unavailable(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreUnavailable, match="cannot open the outbox"):
        Outbox(tmp_path / "file" / "outbox.sqlite3", "p")


# --- the Redis store with its outbox ------------------------------------------------------


def read_stream(url: str, key: str, field: str) -> list[tuple[str, dict]]:
    with redis.Redis.from_url(url, decode_responses=True) as r:
        return [(f["decision_id"], json.loads(f[field])) for _, f in r.xrange(key, "-", "+")]


@pytest.mark.redis
def test_store_falls_back_to_the_outbox_and_drains_in_order_exactly_once(tmp_path, redis_url, redis_prefix):
    path = tmp_path / "outbox.sqlite3"

    async def run():
        # Redis unreachable: decisions and their feedback go to the outbox.
        down = RedisExperienceStore(DEAD_REDIS, prefix=redis_prefix, decision_ttl_s=600,
                                    outbox=await asyncio.to_thread(Outbox, path, redis_prefix))
        contexts = [context() for _ in range(5)]
        ids = [c.decision_id for c in contexts]
        for ctx in contexts:
            await down.put_decision(ctx)
        assert down.degraded
        for i in range(3):
            record = await down.record_feedback(ids[i], sample_feedback(i / 4))
            assert record.quality == i / 4 and record.probabilities == [0.75, 0.25]
        with pytest.raises(DuplicateFeedback):
            await down.record_feedback(ids[0], sample_feedback(1.0))
        with pytest.raises(StoreUnavailable):  # not held locally: only Redis could tell
            await down.record_feedback(uuid.uuid4().hex, sample_feedback(1.0))
        assert down.outbox_appended == 8
        await down.close()

        # Redis reachable: the next store drains the file in order.
        up = RedisExperienceStore(redis_url, prefix=redis_prefix, decision_ttl_s=600,
                                  outbox=await asyncio.to_thread(Outbox, path, redis_prefix))
        assert await up.drain_once() == 8
        assert await up.drain_once() == 0 and await up.outbox.count() == 0
        assert (up.outbox_drained, up.outbox_duplicates) == (8, 0)
        decisions = read_stream(redis_url, f"{redis_prefix}:decisions", "context")
        experience = read_stream(redis_url, f"{redis_prefix}:experience", "record")
        assert [d for d, _ in decisions] == ids
        assert [d for d, _ in experience] == ids[:3]
        assert [r["quality"] for _, r in experience] == [0.0, 0.25, 0.5]
        with redis.Redis.from_url(redis_url) as r:
            assert 590 < r.ttl(f"{redis_prefix}:decision:{ids[4]}") <= 600

        # Once drained, Redis validates: duplicate, and a fresh feedback of a drained decision.
        with pytest.raises(DuplicateFeedback):
            await up.record_feedback(ids[1], sample_feedback(1.0))
        assert (await up.record_feedback(ids[3], sample_feedback(0.75))).quality == 0.75

        # Drained twice (a crash between the script and the delete, or a write whose reply was
        # lost): nothing lands twice.
        box = up.outbox
        assert box is not None
        for i in (0, 3):
            await box.append_decision(ids[i], as_json(contexts[i]), ttl_s=600)
            await box.record_feedback(ids[i], {"quality": 0.125, "feedback_at": NOW})
        assert await up.drain_once() == 4
        assert (up.outbox_drained, up.outbox_duplicates) == (8, 4)
        assert [d for d, _ in read_stream(redis_url, f"{redis_prefix}:decisions", "context")] == ids
        experience = read_stream(redis_url, f"{redis_prefix}:experience", "record")
        assert [d for d, _ in experience] == [*ids[:3], ids[3]]
        assert 0.125 not in [r["quality"] for _, r in experience]
        assert not up.degraded
        await up.close()

    asyncio.run(run())


@pytest.mark.redis
def test_store_background_drain_leaves_degraded_mode(tmp_path, own_redis):
    prefix = f"test-bg-{uuid.uuid4().hex[:8]}"

    async def run():
        store = RedisExperienceStore(own_redis.url, prefix=prefix, decision_ttl_s=600, drain_interval_s=0.05,
                                     outbox=await asyncio.to_thread(Outbox, tmp_path / "o.sqlite3", prefix))
        store.start()
        store._degrade(StoreUnavailable("test: pretend redis failed"))
        ctx = context()
        await store.put_decision(ctx)  # degraded: straight to the outbox
        assert store.outbox_appended == 1
        deadline = time.monotonic() + 30
        while (store.degraded or await store.outbox.count()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not store.degraded and store.outbox_drained == 1
        await store.put_decision(context())  # direct again
        assert store.outbox_appended == 1
        await store.close()

    asyncio.run(run())
    with redis.Redis.from_url(own_redis.url) as r:
        assert r.xlen(f"{prefix}:decisions") == 2


# --- the spec's test: kill -9 the Redis of a live server under load ------------------------

TOPICS = ["integrate x^2 from 0 to 3", "a haiku about autumn", "SQL for the top 5 customers",
          "translate 'thank you' to German", "explain TCP slow start", "summarise the French revolution"]
WORKERS = 4
LAG = 3  # feedback of a decision is sent this many routes later
BEFORE_S, OUTAGE_S, AFTER_S = 3.0, 4.0, 3.0
SETTLE_TIMEOUT_S = 120.0


@pytest.mark.redis
def test_redis_killed_mid_load_loses_and_duplicates_nothing(outage_server):
    server, own, prefix, outbox_path = outage_server
    lock = threading.Lock()
    phase = ["before"]
    stop = threading.Event()
    route_status: Counter = Counter()  # (phase, status)
    feedback_status: Counter = Counter()
    routed: dict[str, str] = {}  # decision_id -> phase
    acked: dict[str, float] = {}  # decision_id -> quality, for every 202
    retry: list[dict] = []  # feedback bodies answered 503
    errors: list[str] = []

    def send_feedback(c: httpx.Client, body: dict, at: str) -> None:
        try:
            r = c.post("/v1/feedback", json=body)
        except httpx.TransportError as exc:
            errors.append(f"feedback: {exc!r}")
            return
        with lock:
            feedback_status[(at, r.status_code)] += 1
            if r.status_code == 202:
                acked[body["decision_id"]] = body["quality"]
            elif r.status_code == 503 and r.headers.get("retry-after") == "1":
                retry.append(body)
            else:
                errors.append(f"feedback {r.status_code}: {r.text}")

    def worker(n: int) -> None:
        """Route, and send each decision's feedback ``LAG`` routes later (as a client does once its
        agent answered), so that decisions made before the kill get feedback during the outage."""
        rng = random.Random(n)
        waiting: list[dict] = []
        with httpx.Client(base_url=server.url, timeout=60.0) as c:
            i = 0
            while not stop.is_set():
                i += 1
                at = phase[0]
                prompt = f"{TOPICS[i % len(TOPICS)]} (worker {n}, request {i}, {uuid.uuid4().hex[:6]})"
                try:
                    r = c.post("/v1/route", json={"prompt": prompt})
                except httpx.TransportError as exc:
                    errors.append(f"route: {exc!r}")
                    continue
                with lock:
                    route_status[(at, r.status_code)] += 1
                if r.status_code != 200:
                    errors.append(f"route {r.status_code}: {r.text}")
                    continue
                decision_id = r.json()["decision_id"]
                with lock:
                    routed[decision_id] = at
                waiting.append({"decision_id": decision_id, "quality": round(rng.random(), 6)})
                if len(waiting) > LAG:
                    send_feedback(c, waiting.pop(0), phase[0])
            for body in waiting:
                send_feedback(c, body, phase[0])

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(WORKERS)]
    for t in threads:
        t.start()
    time.sleep(BEFORE_S)
    own.kill()
    killed_at = time.monotonic()
    phase[0] = "outage"
    time.sleep(OUTAGE_S)
    scraped = httpx.get(f"{server.url}/metrics", timeout=30.0).text  # still during the outage
    held_at_restart = outbox_rows(outbox_path, prefix)
    own.start(wait=True)
    outage_s = time.monotonic() - killed_at
    phase[0] = "after"
    time.sleep(AFTER_S)
    stop.set()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)

    # Clients retry their 503s after Retry-After; a 409 then means an earlier attempt landed
    # (its reply was lost when Redis died), so that record too must be there, once.
    landed_before: dict[str, float] = {}
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    with httpx.Client(base_url=server.url, timeout=60.0) as c:
        while retry and time.monotonic() < deadline:
            body = retry.pop(0)
            r = c.post("/v1/feedback", json=body)
            if r.status_code == 202:
                acked[body["decision_id"]] = body["quality"]
            elif r.status_code == 409:
                landed_before[body["decision_id"]] = body["quality"]
            elif r.status_code == 503:
                retry.append(body)
                time.sleep(0.2)
            else:
                errors.append(f"retried feedback {r.status_code}: {r.text}")
    assert not retry, f"{len(retry)} feedback still 503 after {SETTLE_TIMEOUT_S} s:\n{server.log()[-3000:]}"
    while outbox_rows(outbox_path, prefix) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert outbox_rows(outbox_path, prefix) == 0, server.log()[-3000:]

    with redis.Redis(port=own.port, decode_responses=True) as r:
        experience = [(f["decision_id"], json.loads(f["record"])) for _, f in
                      r.xrange(f"{prefix}:experience", "-", "+")]
        decisions = Counter(f["decision_id"] for _, f in r.xrange(f"{prefix}:decisions", "-", "+"))
    in_stream = Counter(d for d, _ in experience)
    quality = {d: rec["quality"] for d, rec in experience}
    duplicated = [("experience", d) for d, n in in_stream.items() if n > 1]
    duplicated += [("decisions", d) for d, n in decisions.items() if n > 1]
    drained = sum(int(n) for n in re.findall(r"outbox: drained (\d+) records", server.log()))
    summary = (
        f"routes {sum(route_status.values())} ({sum(n for (p, _), n in route_status.items() if p == 'outage')} "
        f"during the {outage_s:.1f} s outage), feedback {sum(feedback_status.values())}, 202 {len(acked)} "
        f"({sum(n for (p, s), n in feedback_status.items() if p == 'outage' and s == 202)} during the outage), "
        f"503 then retried {sum(n for (_, s), n in feedback_status.items() if s == 503)}, 409 after a lost reply "
        f"{len(landed_before)}, outbox held {held_at_restart} rows at restart, drained {drained}, "
        f"experience records {len(experience)}, duplicates {len(duplicated)}"
    )
    print(f"\noutage test: {summary}")

    assert not errors, f"{summary}\n" + "\n".join(errors[:10])
    assert all(s == 200 for (_, s) in route_status), summary
    assert route_status[("outage", 200)] > 0 and feedback_status[("outage", 202)] > 0, summary
    assert not duplicated, f"{summary}: duplicated {duplicated}"
    for decision_id, q in {**acked, **landed_before}.items():
        assert in_stream[decision_id] == 1, f"{decision_id} is {in_stream[decision_id]} times in the stream"
        assert quality[decision_id] == q
    assert set(in_stream) == set(acked) | set(landed_before), summary  # nothing that was not sent
    assert set(routed) <= set(decisions), summary  # every decision answered 200 reached Redis
    assert held_at_restart > 0 and drained >= held_at_restart, summary
    log = server.log()
    assert "Traceback" not in log and '" 500' not in log, log[-3000:]
    # every user of the one Redis client counted its failures in router_redis_errors_total
    failed = {op: float(n) for op, n in re.findall(r'router_redis_errors_total\{operation="([^"]+)"\} (\S+)', scraped)}
    # the store's failures: its writes, or (when a failed ping had already switched it to the outbox) its drains
    assert failed.get("put_decision", 0) + failed.get("drain", 0) > 0, failed
    assert any(op.startswith("load.") and n > 0 for op, n in failed.items()), failed
    assert any(op.startswith("policy.") and n > 0 for op, n in failed.items()), failed
