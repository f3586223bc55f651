"""``retrain`` against the real Redis stream and the SQLite store: records logged through the
production store classes, the watermark, crash recovery, the gate."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import redis

from contract.errors import UserError
from experience.redis_store import RedisExperienceStore
from experience.sqlite_store import SqliteExperienceStore
from policy.checkpoint import META, load_checkpoint
from router.service import RoutingService
from tests.harness import sample_feedback
from training.data import load_splits
from training.retrain import RetrainConfig, run_retrain
from training.retrain import job as retrain_job

pytestmark = pytest.mark.slow


@pytest.fixture
def v1(weak_policy):
    return weak_policy


async def _log(store, policy, cfg, n: int, seed: int = 0) -> list[str]:
    """Route ``n`` train prompts with ``explore`` (3 a session) and post their dataset outcomes."""
    splits = load_splits(cfg)
    ds, emb = splits.splits["train"], splits.embeddings("train")
    service = RoutingService(policy, embedder=None, seed=seed)
    ids = []
    for p in range(n):
        decision = service.route(ds.prompts[p], explore=True, embedding=emb[p], explore_floor=0.05)
        await store.put_decision(service.decision_context(decision, ds.prompts[p], f"s-{p // 3}"))
        a = decision.action
        await store.record_feedback(decision.decision_id, sample_feedback(float(ds.quality[p, a]),
                                                                          cost_usd=float(ds.cost_usd[p, a])))
        ids.append(decision.decision_id)
    return ids


def _log_redis(url, prefix, policy, cfg, n):
    async def go():
        store = RedisExperienceStore(url, prefix=prefix)
        try:
            return await _log(store, policy, cfg, n)
        finally:
            await store.close()
    return asyncio.run(go())


def _versions(root):
    return sorted(p.name for p in root.iterdir() if (p / META).is_file())


def test_retrain_publishes_a_better_policy_then_has_nothing_to_do(v1, redis_url, redis_prefix):
    cfg, v1_dir = v1
    root = v1_dir.parent
    _log_redis(redis_url, redis_prefix, load_checkpoint(v1_dir), cfg, 300)
    # the static split alone (holdout_fraction 0): every record is trained on
    rc = RetrainConfig(checkpoint_root=root, redis_url=redis_url, redis_prefix=redis_prefix, holdout_fraction=0.0)
    result = run_retrain(rc)
    assert result.status == "published", result
    assert result.records == result.used == 300 and result.sessions == 100
    assert result.gate["static"]["candidate"]["reward"] > result.gate["static"]["serving"]["reward"]
    v2 = load_checkpoint(result.checkpoint)
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        last = r.xrevrange(f"{redis_prefix}:experience", count=1)[0][0]
        assert r.get(f"{redis_prefix}:policy:current") == v2.path.name
        assert r.xpending(f"{redis_prefix}:experience", "retrain")["pending"] == 0
    assert v2.meta.watermark.model_dump() == {"source": "redis", "name": f"{redis_prefix}:experience", "id": last}
    assert v2.meta.retrain["parent_version"] == load_checkpoint(v1_dir).version
    # 10 epochs x 4 minibatches moved the policy away from the logging policy, boundedly
    assert result.train["grad_steps"] == 40
    assert 0 < result.train["approx_kl"] < 0.5 and result.train["clipfrac"] < 1

    again = run_retrain(rc)
    assert again.status == "too_few" and again.records == 0
    assert again.serving_version == v2.version
    assert _versions(root) == sorted([v1_dir.name, v2.path.name])


def test_crash_between_checkpoint_and_publish_trains_each_record_once(v1, redis_url, redis_prefix, monkeypatch):
    cfg, v1_dir = v1
    root = v1_dir.parent
    _log_redis(redis_url, redis_prefix, load_checkpoint(v1_dir), cfg, 120)
    rc = RetrainConfig(checkpoint_root=root, redis_url=redis_url, redis_prefix=redis_prefix, update_epochs=2,
                       margin=1.0, holdout_fraction=0.0)

    def crash(self, version):
        raise KeyboardInterrupt("killed after the checkpoint was durable")

    monkeypatch.setattr(retrain_job.Publisher, "publish", crash)
    with pytest.raises(KeyboardInterrupt):
        run_retrain(rc)
    monkeypatch.undo()
    (candidate,) = set(_versions(root)) - {v1_dir.name}
    key = f"{redis_prefix}:policy:current"
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.get(key) is None
        assert r.xpending(f"{redis_prefix}:experience", "retrain")["pending"] == 120  # delivered, not acked

    rerun = run_retrain(rc)
    assert rerun.recovered == load_checkpoint(root / candidate).version  # the publish is finished
    assert rerun.stale_acked == 120 and rerun.records == 0 and rerun.status == "too_few"
    assert set(_versions(root)) == {v1_dir.name, candidate}  # not trained a second time
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.get(key) == candidate
        assert r.xpending(f"{redis_prefix}:experience", "retrain")["pending"] == 0


def test_crash_before_the_checkpoint_leaves_the_records_pending(v1, redis_url, redis_prefix, monkeypatch):
    cfg, v1_dir = v1
    root = v1_dir.parent
    _log_redis(redis_url, redis_prefix, load_checkpoint(v1_dir), cfg, 90)
    rc = RetrainConfig(checkpoint_root=root, redis_url=redis_url, redis_prefix=redis_prefix, update_epochs=2,
                       margin=1.0, holdout_fraction=0.0)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while training")

    monkeypatch.setattr(retrain_job, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        run_retrain(rc)
    monkeypatch.undo()
    assert _versions(root) == [v1_dir.name]
    # a crashed run's entries are claimed by the next run, whichever consumer it is
    rerun = run_retrain(rc.model_copy(update={"consumer": "retrain-2"}))
    assert rerun.records == 90 and rerun.stale_acked == 0 and rerun.status == "published"
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.xpending(f"{redis_prefix}:experience", "retrain")["pending"] == 0


def test_static_gate_rejects_a_worse_candidate(v1, redis_url, redis_prefix):
    """Without held-out logged data (holdout_fraction 0) the static split decides: feedback that
    rewards the worst agent makes the candidate worse there, and it is kept under rejected/, never
    published; its records are still consumed."""
    cfg, v1_dir = v1
    root = v1_dir.parent
    policy = load_checkpoint(v1_dir)
    splits = load_splits(cfg)
    ds, emb = splits.splits["train"], splits.embeddings("train")
    worst = int(np.argmin(ds.quality.mean(0)))

    async def go():
        store = RedisExperienceStore(redis_url, prefix=redis_prefix)
        service = RoutingService(policy, embedder=None, seed=1)
        try:
            for p in range(200):
                d = service.route(ds.prompts[p], explore=True, embedding=emb[p], explore_floor=0.1)
                await store.put_decision(service.decision_context(d, ds.prompts[p], None))
                await store.record_feedback(d.decision_id, sample_feedback(1.0 if d.action == worst else 0.0))
        finally:
            await store.close()

    asyncio.run(go())
    result = run_retrain(RetrainConfig(checkpoint_root=root, redis_url=redis_url, redis_prefix=redis_prefix,
                                       margin=0.0, holdout_fraction=0.0))
    assert result.status == "rejected", result.gate
    assert (root / "rejected" / result.version / META).is_file()
    assert _versions(root) == [v1_dir.name]
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        assert r.get(f"{redis_prefix}:policy:current") is None
    assert run_retrain(RetrainConfig(checkpoint_root=root, redis_url=redis_url,
                                     redis_prefix=redis_prefix, holdout_fraction=0.0)).records == 0


def test_sqlite_store_watermark(v1, tmp_path):
    cfg, v1_dir = v1
    root, db = v1_dir.parent, tmp_path / "experience.sqlite3"

    async def go(n):
        store = SqliteExperienceStore(db)
        try:
            await _log(store, load_checkpoint(v1_dir), cfg, n)
        finally:
            await store.close()

    asyncio.run(go(60))
    rc = RetrainConfig(checkpoint_root=root, sqlite_path=db, update_epochs=2, margin=1.0, holdout_fraction=0.0)
    first = run_retrain(rc)
    assert first.status == "saved" and first.records == 60 and first.watermark == "60"
    assert run_retrain(rc).records == 0
    asyncio.run(go(30))
    second = run_retrain(rc)
    assert second.records == 30 and second.watermark == "90"
    assert second.serving_version == first.version  # the newest version, without Redis
    meta = json.loads((root / second.version / META).read_text())
    assert meta["data"]["watermark"]["id"] == "90"


# ------------------------------------------------------------------ the gate on held-out logged data
@pytest.fixture(params=["redis", "sqlite"])
def store_kind(request):
    return request.param


def _log_rewarding(kind, url, prefix, db, policy, cfg, n, reward_of) -> None:
    """Route ``n`` train prompts with exploration (floor 0.1) and post ``reward_of(prompt, agent)``."""
    splits = load_splits(cfg)
    ds, emb = splits.splits["train"], splits.embeddings("train")

    async def go():
        store = RedisExperienceStore(url, prefix=prefix) if kind == "redis" else SqliteExperienceStore(db)
        service = RoutingService(policy, embedder=None, seed=3)
        try:
            for i in range(n):
                p = i % len(ds)
                d = service.route(ds.prompts[p], explore=True, embedding=emb[p], explore_floor=0.1)
                await store.put_decision(service.decision_context(d, ds.prompts[p], None))
                await store.record_feedback(d.decision_id, sample_feedback(reward_of(p, d.action)))
        finally:
            await store.close()

    asyncio.run(go())


def _retrain_config(kind, root, url, prefix, db, **fields) -> RetrainConfig:
    where = {"redis_url": url, "redis_prefix": prefix} if kind == "redis" else {"sqlite_path": db}
    return RetrainConfig(checkpoint_root=root, **where, **fields)


def test_logged_data_outvotes_the_static_split(v1, store_kind, redis_url, redis_prefix, tmp_path):
    """The world changed: only the dataset's worst agent now answers well. The candidate that
    follows the feedback is worse on the static split, and better on held-out logged data: it is
    published (saved, without Redis)."""
    cfg, v1_dir = v1
    root, db = v1_dir.parent, tmp_path / "experience.sqlite3"
    policy = load_checkpoint(v1_dir)
    worst = int(np.argmin(load_splits(cfg).splits["train"].quality.mean(0)))
    _log_rewarding(store_kind, redis_url, redis_prefix, db, policy, cfg, 1200,
                   lambda p, a: 1.0 if a == worst else 0.0)
    result = run_retrain(_retrain_config(store_kind, root, redis_url, redis_prefix, db, min_ess=10,
                                         update_epochs=20, margin=0.0))
    gate = result.gate
    assert gate["static"]["passed"] is False, gate["static"]  # the static split disagrees
    assert gate["logged"]["verdict"] == "better" and gate["passed"], gate["logged"]
    assert result.status == ("published" if store_kind == "redis" else "saved")
    assert result.used + gate["logged"]["decisions"] == 1200
    meta = json.loads((root / result.version / META).read_text())
    assert meta["retrain"]["gate"]["rule"].startswith("logged better: pass")
    assert meta["retrain"]["config"]["min_ess"] == 10 and meta["retrain"]["config"]["holdout_fraction"] == 0.2


def test_a_candidate_worse_on_logged_data_is_refused(v1, store_kind, redis_url, redis_prefix, tmp_path):
    """Logged feedback rewards exactly the serving policy's own choices, but the candidate learns
    from simulated rollouts of the static dataset instead (the logged update barely moves it):
    better on the static split, worse on held-out logged data, refused."""
    from training.evaluation.offline import policy_choices

    cfg, v1_dir = v1
    root, db = v1_dir.parent, tmp_path / "experience.sqlite3"
    policy = load_checkpoint(v1_dir)
    train = load_splits(cfg).splits["train"]
    own = policy_choices(policy, load_splits(cfg).embeddings("train"), train.prompt_tokens)
    _log_rewarding(store_kind, redis_url, redis_prefix, db, policy, cfg, 1600,
                   lambda p, a: 1.0 if a == own[p] else 0.0)
    result = run_retrain(_retrain_config(store_kind, root, redis_url, redis_prefix, db, min_ess=10,
                                         sim_iterations=30, lr=1e-3, update_epochs=1, margin=1.0))
    gate = result.gate
    assert gate["static"]["passed"], gate["static"]  # the static split would publish it
    assert gate["logged"]["verdict"] == "worse" and not gate["passed"], gate["logged"]
    assert result.status == "rejected" and (root / "rejected" / result.version / META).is_file()


def test_too_few_held_out_decisions_refuse_and_say_so(v1, store_kind, redis_url, redis_prefix, tmp_path):
    cfg, v1_dir = v1
    root, db = v1_dir.parent, tmp_path / "experience.sqlite3"
    _log_rewarding(store_kind, redis_url, redis_prefix, db, load_checkpoint(v1_dir), cfg, 60, lambda p, a: 0.5)
    result = run_retrain(_retrain_config(store_kind, root, redis_url, redis_prefix, db, update_epochs=2,
                                         margin=1.0))
    assert result.status == "rejected" and result.gate["logged"]["verdict"] == "too_few"
    assert "too few held-out logged decisions" in result.gate["reason"] and "need 30" in result.gate["reason"]


def test_rounds_retrain_then_find_nothing_and_record_each_round(v1, tmp_path):
    from training.retrain.rounds import parse_interval, run_rounds

    cfg, v1_dir = v1
    root, db = v1_dir.parent, tmp_path / "experience.sqlite3"
    _log_rewarding("sqlite", None, None, db, load_checkpoint(v1_dir), cfg, 300, lambda p, a: 0.5)
    slept: list[float] = []
    rounds = run_rounds(RetrainConfig(checkpoint_root=root, sqlite_path=db, min_ess=5, margin=1.0),
                        parse_interval("10m"), 2, tmp_path / "rounds.jsonl", sleep=slept.append)
    assert [r["status"] for r in rounds] == [rounds[0]["status"], "too_few"] and rounds[0]["records"] == 300
    assert rounds[0]["status"] in ("saved", "rejected") and "candidate_dr" in rounds[0] and "serving_ess" in rounds[0]
    assert len(slept) == 1 and 0 < slept[0] <= 600
    lines = [json.loads(x) for x in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    assert [x["round"] for x in lines] == [1, 2]
    assert parse_interval("90s") == 90 and parse_interval("1h") == 3600 and parse_interval("2.5") == 2.5
    for bad in ("0m", "-1s", "10 minutes", ""):
        with pytest.raises(UserError, match="--every"):
            parse_interval(bad)
