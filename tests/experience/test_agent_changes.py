"""The record of agent-set changes, on Redis and on SQLite: each change once, in order, and a
second writer of the same change is told."""

from __future__ import annotations

import pytest

from experience.agent_changes import AgentChangeConflict, RedisAgentChanges, SqliteAgentChanges


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def changes(request, tmp_path):
    if request.param == "sqlite":
        record = SqliteAgentChanges(tmp_path / "experience.sqlite3")
        assert record.read().added == []  # no file yet: nothing recorded
    else:
        record = RedisAgentChanges(request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix"))
    yield record
    record.close()


def test_changes_are_recorded_once_and_read_in_order(changes):
    changes.add({"name": "b", "price_per_1m_tokens": 1.0})
    changes.add({"name": "a", "prior_quality": 0.7})
    changes.retire("old")
    with pytest.raises(AgentChangeConflict, match="'b' was added already"):
        changes.add({"name": "b"})
    with pytest.raises(AgentChangeConflict, match="'old' was retired already"):
        changes.retire("old")
    changes.retire("b")
    recorded = changes.read()
    assert recorded.added == [{"name": "b", "price_per_1m_tokens": 1.0}, {"name": "a", "prior_quality": 0.7}]
    assert recorded.retired == ["old", "b"]
