"""The experience stores on their own: atomicity, failures that leave nothing marked, paging."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest
import redis

from contract.experience import DecisionContext, ExperienceRecord
from experience import (
    DuplicateFeedback,
    RedisExperienceStore,
    SqliteExperienceStore,
    StoreUnavailable,
    UnknownDecision,
)
from tests.harness import sample_context, sample_feedback


def context(decision_id: str | None = None) -> DecisionContext:
    return sample_context(decision_id, agents=["a", "b"], probabilities=[0.1234567890123, 0.8765432109877],
                          action=1, agent="b", log_prob=-0.13176)


async def one_winner(store, decision_id: str, n: int = 12) -> list:
    results = await asyncio.gather(
        *(store.record_feedback(decision_id, sample_feedback(i / n)) for i in range(n)),
        return_exceptions=True,
    )
    return results


# --- SQLite -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_path(tmp_path):
    return tmp_path / "sub" / "experience.sqlite3"


def test_sqlite_round_trip_and_paging(sqlite_path):
    async def run():
        store = SqliteExperienceStore(sqlite_path)
        ids = []
        for i in range(5):
            ctx = context()
            ids.append(ctx.decision_id)
            await store.put_decision(ctx)
            record = await store.record_feedback(ctx.decision_id, sample_feedback(i / 4))
            assert record.probabilities == ctx.probabilities
            assert record.quality == i / 4 and record.feedback_at
        first = await store.read_experience(count=2)
        rest = await store.read_experience(after=first[-1][0], count=100)
        assert [r["decision_id"] for _, r in first + rest] == ids
        assert await store.read_experience(after=rest[-1][0]) == []
        with pytest.raises(ValueError):
            await store.read_experience(after="1-0")
        with pytest.raises(ValueError):
            await store.read_experience(count=0)
        await store.ping()
        await store.close()
        with pytest.raises(StoreUnavailable):
            await store.ping()

    asyncio.run(run())
    conn = sqlite3.connect(sqlite_path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_sqlite_feedback_is_atomic_across_connections(sqlite_path):
    async def run():
        a, b = SqliteExperienceStore(sqlite_path), SqliteExperienceStore(sqlite_path)
        ctx = context()
        await a.put_decision(ctx)
        results = await one_winner(a, ctx.decision_id) + await one_winner(b, ctx.decision_id)
        assert sum(isinstance(r, ExperienceRecord) for r in results) == 1
        assert all(isinstance(r, DuplicateFeedback) for r in results if not isinstance(r, ExperienceRecord))
        assert len(await b.read_experience()) == 1
        await a.close()
        await b.close()

    asyncio.run(run())


def test_sqlite_failed_write_leaves_no_mark(sqlite_path):
    async def run():
        store = SqliteExperienceStore(sqlite_path, busy_timeout_s=0.05)
        ctx = context()
        await store.put_decision(ctx)
        other = sqlite3.connect(sqlite_path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            await store.record_feedback(ctx.decision_id, sample_feedback(0.5))
        other.execute("ROLLBACK")
        other.close()
        record = await store.record_feedback(ctx.decision_id, sample_feedback(0.5))
        assert record.quality == 0.5
        assert len(await store.read_experience()) == 1
        await store.close()

    asyncio.run(run())


def test_sqlite_writes_arriving_together_share_one_commit_and_fail_alone(sqlite_path):
    async def run():
        store = SqliteExperienceStore(sqlite_path)
        contexts = [context() for _ in range(40)]
        await store.put_decision(contexts[0])
        db = store._db
        commits, writes = db.commits, db.writes
        # 39 new decisions, one duplicate, and feedback for the first, all at once
        results = await asyncio.gather(*(store.put_decision(c) for c in contexts[1:]),
                                       store.put_decision(contexts[0]),
                                       store.record_feedback(contexts[0].decision_id, sample_feedback(0.5)),
                                       store.record_feedback("no-such-decision", sample_feedback(0.5)),
                                       return_exceptions=True)
        assert all(r is None for r in results[:39])
        assert isinstance(results[39], ValueError)  # the duplicate fails alone
        assert isinstance(results[40], ExperienceRecord)
        assert isinstance(results[41], UnknownDecision)
        assert db.writes - writes == 42 and db.commits - commits < 42 / 4  # grouped: far fewer fsyncs than writes
        await store.close()
        # every answered write is on disk: a new connection sees them
        with sqlite3.connect(sqlite_path) as conn:
            ids = {r for (r,) in conn.execute("SELECT decision_id FROM decisions")}
            assert ids == {c.decision_id for c in contexts}
            assert conn.execute("SELECT count(*) FROM experience").fetchone()[0] == 1

    asyncio.run(run())


def test_sqlite_decisions_without_their_own_fsync_survive_a_killed_process(sqlite_path):
    """decision_sync='normal': the decision is in the WAL when put_decision returns, so a process killed
    right after (no close, no checkpoint) leaves it readable; feedback commits stay fsynced (FULL)."""
    import subprocess
    import sys

    from tests.harness import ROOT

    ctx = context()
    script = (
        "import asyncio, os, sys\n"
        "from experience import SqliteExperienceStore\n"
        "from contract.experience import DecisionContext\n"
        "async def main():\n"
        "    store = SqliteExperienceStore(sys.argv[1], decision_sync='normal')\n"
        "    await store.put_decision(DecisionContext.model_validate_json(sys.argv[2]))\n"
        "    assert store._db._conn.execute('PRAGMA synchronous').fetchone()[0] == 2  # back to FULL\n"
        "    os._exit(0)  # killed: nothing closed, nothing checkpointed\n"
        "asyncio.run(main())\n")
    run = subprocess.run([sys.executable, "-c", script, str(sqlite_path), ctx.model_dump_json()], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr

    async def run_feedback():
        store = SqliteExperienceStore(sqlite_path)
        record = await store.record_feedback(ctx.decision_id, sample_feedback(0.25))
        assert record.quality == 0.25
        await store.close()

    asyncio.run(run_feedback())
    with pytest.raises(ValueError):
        SqliteExperienceStore(sqlite_path, decision_sync="sometimes")


def test_sqlite_unknown_and_expired(sqlite_path):
    async def run():
        store = SqliteExperienceStore(sqlite_path)
        with pytest.raises(UnknownDecision):
            await store.record_feedback("nope", sample_feedback(1.0))
        ctx = context()
        await store.put_decision(ctx)
        conn = sqlite3.connect(sqlite_path)
        conn.execute("UPDATE decisions SET expires_at = 0 WHERE decision_id = ?",
                     (ctx.decision_id,))
        conn.commit()
        conn.close()
        with pytest.raises(UnknownDecision):
            await store.record_feedback(ctx.decision_id, sample_feedback(1.0))
        with pytest.raises(ValueError, match="already exists"):
            await store.put_decision(ctx)
        await store.close()

    asyncio.run(run())


def test_sqlite_unopenable_path_is_unavailable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match="cannot open"):
        SqliteExperienceStore(blocker / "experience.sqlite3")


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture
def redis_store(redis_url, redis_prefix):
    return RedisExperienceStore(redis_url, prefix=redis_prefix, stream_maxlen=1000,
                                decision_ttl_s=60)


@pytest.mark.redis
def test_redis_feedback_is_atomic_and_exact(redis_store, redis_url, redis_prefix):
    async def run():
        ctx = context()
        await redis_store.put_decision(ctx)
        results = await one_winner(redis_store, ctx.decision_id)
        winners = [r for r in results if isinstance(r, ExperienceRecord)]
        assert len(winners) == 1
        assert all(isinstance(r, DuplicateFeedback) for r in results if not isinstance(r, ExperienceRecord))
        ((entry_id, record),) = await redis_store.read_experience()
        assert record == winners[0].to_json_dict()
        assert record["probabilities"] == ctx.probabilities  # floats kept exactly
        assert await redis_store.read_experience(after=entry_id) == []
        with pytest.raises(ValueError):
            await redis_store.read_experience(after="abc")
        await redis_store.close()

    asyncio.run(run())
    with redis.Redis.from_url(redis_url) as r:
        marker_ttls = [r.ttl(k) for k in r.scan_iter(match=f"{redis_prefix}:feedback:*")]
        assert len(marker_ttls) == 1 and 0 < marker_ttls[0] <= 60


@pytest.mark.redis
def test_redis_failed_write_leaves_no_mark(redis_store, redis_url, redis_prefix):
    async def run():
        ctx = context()
        await redis_store.put_decision(ctx)
        with redis.Redis.from_url(redis_url) as r:  # make the XADD fail inside the script
            r.set(f"{redis_prefix}:experience", "not a stream")
        with pytest.raises(StoreUnavailable, match="WRONGTYPE"):
            await redis_store.record_feedback(ctx.decision_id, sample_feedback(0.5))
        with redis.Redis.from_url(redis_url) as r:
            assert not r.exists(f"{redis_prefix}:feedback:{ctx.decision_id}")
            r.delete(f"{redis_prefix}:experience")
        record = await redis_store.record_feedback(ctx.decision_id, sample_feedback(0.5))
        assert record.quality == 0.5
        assert len(await redis_store.read_experience()) == 1
        with pytest.raises(UnknownDecision):
            await redis_store.record_feedback(uuid.uuid4().hex, sample_feedback(0.5))
        await redis_store.close()

    asyncio.run(run())


def test_redis_unreachable_is_unavailable():
    async def run():
        store = RedisExperienceStore("redis://127.0.0.1:1/0", prefix=f"test-{uuid.uuid4().hex}")
        calls = (
            lambda: store.ping(),
            lambda: store.put_decision(context()),
            lambda: store.record_feedback("x", sample_feedback(1.0)),
            lambda: store.read_experience(),
        )
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call()
        await store.close()

    asyncio.run(run())


def test_redis_bad_url_is_value_error():
    with pytest.raises(ValueError):
        RedisExperienceStore("http://127.0.0.1:6379")
