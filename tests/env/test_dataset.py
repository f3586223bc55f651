import gzip
import json

import numpy as np
import pytest

from contract.errors import DataError
from env.convert import convert_llmrouter_dc
from env.dataset import load_dataset, split_indices
from tests.conftest import UPSTREAM


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _agents(path, names, **extra):
    path.write_text(json.dumps({"agents": [{"name": n, "price_per_1m_tokens": 1.0, **extra} for n in names]}))
    return path


def _row(i, prompt=None, session=None, outcomes=None):
    return {"id": f"p{i}", "prompt": prompt or f"prompt number {i}", "task": "t", "session_id": session,
            "turn": None, "outcomes": outcomes or {"a": {"quality": 1.0, "cost_usd": 0.001},
                                                   "b": {"quality": 0.0, "cost_usd": None}}}


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason="../shared/data/llmrouter-dc not beside the checkout")
def test_converter_reproduces_the_shipped_data(tmp_path, shipped_paths):
    counts = convert_llmrouter_dc(UPSTREAM, tmp_path)
    assert counts == {"prompts": 5160, "agents": 9}
    shipped_prompts, shipped_agents = shipped_paths
    assert json.loads((tmp_path / "agents.json").read_text()) == json.loads(shipped_agents.read_text())
    with gzip.open(tmp_path / "prompts.jsonl.gz", "rt") as a, gzip.open(shipped_prompts, "rt") as b:
        assert a.read() == b.read()
    assert (tmp_path / "LICENSE").read_text().startswith("MIT License")
    assert "ulab-uiuc/LLMRouter" in (tmp_path / "ATTRIBUTION.md").read_text()

    ds = load_dataset(tmp_path / "prompts.jsonl.gz", tmp_path / "agents.json")
    upstream = [json.loads(line) for line in (UPSTREAM / "train.jsonl").open()]
    for k in (0, 1234, 5159):
        row, i = upstream[k], ds.ids.index(f"llmrouter-dc-{upstream[k]['row']}")
        assert ds.prompts[i] == row["question"]
        assert [row["scores"][n] for n in ds.agent_names] == pytest.approx(ds.quality[i].tolist())
    # cost follows price: the 0.9 $/1M models cost 9x gemma's 0.1 on every prompt with equal tokens
    price = np.array([a.price_per_1m_tokens for a in ds.agents])
    assert (ds.cost_usd > 0).all()
    np.testing.assert_allclose(ds.cost_usd / price, np.repeat(ds.cost_usd[:, :1] / price[0], 9, axis=1), rtol=1e-5)


def test_shipped_data_loads_with_attribution(shipped_paths):
    prompts, agents = shipped_paths
    ds = load_dataset(prompts, agents)
    assert len(ds) == 5160 and len(ds.agents) == 9
    assert ds.quality.shape == ds.cost_usd.shape == (5160, 9)
    assert ((ds.quality >= 0) & (ds.quality <= 1)).all()
    assert (prompts.parent / "LICENSE").is_file() and (prompts.parent / "ATTRIBUTION.md").is_file()


def test_splits_are_seeded_and_never_share_a_prompt(shipped_paths):
    ds = load_dataset(*shipped_paths)
    s = split_indices(ds, seed=0)
    assert sum(len(v) for v in s.values()) == len(ds)
    assert abs(len(s["train"]) / len(ds) - 0.7) < 0.01
    texts = {k: {ds.prompts[i].strip() for i in v} for k, v in s.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"]
    assert not texts["val"] & texts["test"]
    again = split_indices(ds, seed=0)
    assert all(np.array_equal(s[k], again[k]) for k in s)
    other = split_indices(ds, seed=1)
    assert not np.array_equal(s["test"], other["test"])


def test_split_keeps_duplicate_texts_and_sessions_together(tmp_path):
    rows = [_row(i) for i in range(40)]
    rows += [_row(100 + i, prompt="the same question") for i in range(5)]
    rows += [_row(200 + i, prompt=f"turn {i}", session="s1") for i in range(6)]
    ds = load_dataset(_write_jsonl(tmp_path / "p.jsonl", rows), _agents(tmp_path / "a.json", ["a", "b"]))
    for seed in range(5):
        s = split_indices(ds, (0.5, 0.25, 0.25), seed=seed)
        where = {i: k for k, v in s.items() for i in v}
        assert len({where[ds.ids.index(f"p{100 + i}")] for i in range(5)}) == 1
        assert len({where[ds.ids.index(f"p{200 + i}")] for i in range(6)}) == 1


def test_null_cost_is_derived_from_price(tmp_path):
    ds = load_dataset(_write_jsonl(tmp_path / "p.jsonl", [_row(0, prompt="x" * 400)]),
                      _agents(tmp_path / "a.json", ["a", "b"]))
    assert ds.cost_usd[0, 0] == pytest.approx(0.001)
    # b: 1 $/1M tokens x (400/4 prompt + 256 output tokens)
    assert ds.cost_usd[0, 1] == pytest.approx((100 + 256) / 1e6)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "prompt": "hi", "outcomes": {}}', "line has no outcomes"),
        ('{"id": "x", "prompt": "hi"}', "line has no outcomes"),
        ("{not json", "invalid JSON"),
        ('{"id": "x", "prompt": "hi", "outcomes": {"a": {"quality": 1.5}, "b": {"quality": 0}}}', "quality"),
        ('{"id": "x", "prompt": "hi", "outcomes": {"a": {"quality": 1}, "c": {"quality": 0}}}', "not in a.json: c"),
        ('{"id": "x", "prompt": "hi", "outcomes": {"a": {"quality": 1}}}', "no outcome for agents: b"),
        ('{"id": "x", "prompt": "", "outcomes": {"a": {"quality": 1}, "b": {"quality": 0}}}', "prompt"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps(_row(0))
    path = tmp_path / "p.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(path, _agents(tmp_path / "a.json", ["a", "b"]))
    assert f"{path}:3:" in str(err.value)
    assert message in str(err.value)


def test_bad_agents_files(tmp_path):
    prompts = _write_jsonl(tmp_path / "p.jsonl", [_row(0)])
    (tmp_path / "dup.json").write_text(json.dumps([{"name": "a"}, {"name": "a"}]))
    with pytest.raises(DataError, match="duplicate agent names: a"):
        load_dataset(prompts, tmp_path / "dup.json")
    (tmp_path / "bad.yaml").write_text("agents: [name: a, capacity: -1]")
    with pytest.raises(DataError, match=r"bad\.yaml"):
        load_dataset(prompts, tmp_path / "bad.yaml")
    with pytest.raises(DataError, match="agents file not found"):
        load_dataset(prompts, tmp_path / "missing.json")
    (tmp_path / "a.yaml").write_text("agents:\n  - {name: a, capacity: 2}\n  - {name: b, cost_per_call_usd: 0.01}\n")
    ds = load_dataset(prompts, tmp_path / "a.yaml")
    assert ds.capacities == [2, None] and ds.cost_usd[0, 1] == pytest.approx(0.01)


def test_duplicate_ids_are_refused(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [_row(0), _row(0, prompt="other")])
    with pytest.raises(DataError, match=r"p.jsonl:2: duplicate id 'p0'"):
        load_dataset(path, _agents(tmp_path / "a.json", ["a", "b"]))
