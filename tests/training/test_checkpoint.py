import json

import pytest
import torch

from contract.observation import ObsLayout
from contract.policy_meta import FORMAT, FORMAT_V1, NetworkMeta, migrate_v1, parse_policy_meta
from policy.checkpoint import META, WEIGHTS, CheckpointError, load_checkpoint, resolve_checkpoint, save_checkpoint
from policy.networks import NetworkShape, build_networks

AGENTS = ["small", "medium", "large"]


def _meta(hidden=(16, 16), share=True, routers=2, centralised=True):
    return {
        "agents": AGENTS,
        "capacities": [None, 2, None],
        "embedding": {"model": "sentence-transformers/all-MiniLM-L6-v2", "dim": 8},
        "obs_layout": {"embed_dim": 8, "num_agents": 3, "num_routers": routers, "load_clip": 4.0,
                       "include_agent_id": True},
        "network": {"hidden": list(hidden), "share_params": share, "centralised_critic": centralised},
        "eval": {"val": {"policy": {"quality": 0.5}}},
    }


def build_networks_of(meta):
    return build_networks(NetworkMeta(**meta["network"]), NetworkShape.of_layout(ObsLayout(**meta["obs_layout"])))


@pytest.mark.parametrize(("share", "centralised"), [(True, True), (False, True), (True, False), (False, False)])
def test_round_trip_gives_the_same_policy(tmp_path, share, centralised):
    meta = _meta(share=share, centralised=centralised)
    actor, critic = build_networks_of(meta)
    path = save_checkpoint(tmp_path, actor, critic, meta)
    policy = load_checkpoint(path, expect_agents=AGENTS)
    obs, state = torch.randn(5, 2, 13), torch.randn(5, 26)
    torch.testing.assert_close(policy.actor(obs), actor(obs))
    torch.testing.assert_close(policy.critic(obs, state), critic(obs, state))
    saved = json.loads((path / META).read_text())
    assert saved["version"] == path.name and saved["agents"] == AGENTS
    assert len(saved["weights_sha256"]) == 64 and saved["created_at"].endswith("+00:00")
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary directory left behind"
    # serving helpers: obs layout as in training, a distribution over the agents
    probs = policy.probabilities(policy.build_obs(torch.randn(4, 8), torch.zeros(4, 3), router=1))
    assert probs.shape == (4, 1, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, 1))


def test_parent_directory_resolves_to_the_newest(tmp_path):
    meta = _meta()
    first = save_checkpoint(tmp_path, *build_networks_of(meta), meta)
    second = save_checkpoint(tmp_path, *build_networks_of(meta), {**meta, "version": "zz-later"})
    assert resolve_checkpoint(tmp_path) == second != first
    assert load_checkpoint(tmp_path).version == "zz-later"


def test_corrupt_weights_are_refused(tmp_path):
    path = save_checkpoint(tmp_path, *build_networks_of(_meta()), _meta())
    data = bytearray((path / WEIGHTS).read_bytes())
    data[-5] ^= 0xFF
    (path / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"does not match policy\.json"):
        load_checkpoint(path)


def test_mismatched_shapes_are_refused(tmp_path):
    path = save_checkpoint(tmp_path, *build_networks_of(_meta()), _meta())
    meta = json.loads((path / META).read_text())
    meta["network"]["hidden"] = [32, 16]  # hash still matches, architecture does not
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(path)


def test_wrong_agent_list_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, *build_networks_of(_meta()), _meta())
    with pytest.raises(CheckpointError, match="do not match the expected"):
        load_checkpoint(path, expect_agents=["small", "large", "medium"])


@pytest.mark.parametrize("damage", ["missing_dir", "empty_dir", "no_weights", "bad_json", "truncated_weights"])
def test_missing_or_broken_checkpoints(tmp_path, damage):
    path = save_checkpoint(tmp_path / "ck", *build_networks_of(_meta()), _meta())
    target = path
    if damage == "missing_dir":
        target = tmp_path / "nope"
    elif damage == "empty_dir":
        target = tmp_path / "empty"
        target.mkdir()
    elif damage == "no_weights":
        (path / WEIGHTS).unlink()
    elif damage == "bad_json":
        (path / META).write_text("{not json")
    elif damage == "truncated_weights":
        (path / WEIGHTS).write_bytes((path / WEIGHTS).read_bytes()[:100])
    with pytest.raises(CheckpointError):
        load_checkpoint(target)


def _as_v1(saved: dict) -> dict:
    """``saved`` (a v2 ``policy.json``) in the v1 layout of earlier releases."""
    old = dict(saved)
    layout = old["obs_layout"]
    old["format"] = FORMAT_V1
    old["obs_layout"] = {"obs_dim": layout["obs_dim"], "num_routers": layout["num_routers"],
                         "include_agent_id": layout["include_agent_id"]}  # the oldest had no load_clip
    old.pop("capacities")
    return old


def test_a_v1_policy_json_still_loads_through_the_migration(tmp_path):
    path = save_checkpoint(tmp_path, *build_networks_of(_meta()), _meta())
    saved = json.loads((path / META).read_text())
    assert saved["format"] == FORMAT and saved["obs_layout"]["obs_dim"] == 8 + 3 + 2
    (path / META).write_text(json.dumps(_as_v1(saved)))
    policy = load_checkpoint(path)
    assert policy.meta.format == FORMAT
    assert policy.layout == ObsLayout(embed_dim=8, num_agents=3, num_routers=2, include_agent_id=True, load_clip=4.0)
    assert policy.meta.capacities == [None, None, None]  # v1 without capacities: unbounded
    migrated = migrate_v1({**_as_v1(saved), "capacities": [1, "x", 3]})
    assert migrated["capacities"] == [None, None, None]  # an unusable list is ignored whole
    assert migrate_v1({**_as_v1(saved), "capacities": [1, None, 3.0]})["capacities"] == [1, None, 3]


@pytest.mark.parametrize(("change", "message"), [
    ({"format": "agent-router/policy/v9"}, "format"),
    ({"capacities": [1]}, "capacities"),
    ({"agents": ["small", "small", "large"]}, "duplicate"),
    ({"obs_layout": {"embed_dim": 8, "num_agents": 3, "num_routers": 2, "include_agent_id": True, "obs_dim": 99}},
     "obs_dim"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_metadata_is_refused_with_its_reason(tmp_path, change, message):
    path = save_checkpoint(tmp_path, *build_networks_of(_meta()), _meta())
    saved = json.loads((path / META).read_text())
    (path / META).write_text(json.dumps({**saved, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=message):
        parse_policy_meta({**saved, **change})


def test_invalid_metadata_is_never_written(tmp_path):
    with pytest.raises(ValueError, match="capacities"):
        save_checkpoint(tmp_path, *build_networks_of(_meta()), {**_meta(), "capacities": [1, 2]})
    assert not any(tmp_path.iterdir())
