"""`agent-router data convert routellm-evals`: the real upstream data, the shipped copy, the CLI."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from contract.errors import DataError
from env.convert import CONVERTERS
from env.convert.routellm_evals import (
    FILES,
    MT_BENCH_OUTPUT_TOKENS,
    PRICE_PER_1M_TOKENS,
    STRONG,
    WEAK,
    convert_routellm_evals,
)
from env.dataset import load_dataset, split_indices
from tests.conftest import ROOT

UPSTREAM = ROOT.parent / "shared" / "data" / "routellm-evals"
SHIPPED = ROOT / "data" / "routellm-evals"

needs_upstream = pytest.mark.skipif(not UPSTREAM.is_dir(), reason=f"upstream data not at {UPSTREAM}")


def _jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One conversion of the real upstream data for the whole module (about 15 s)."""
    if not UPSTREAM.is_dir():
        pytest.skip(f"upstream data not at {UPSTREAM}")
    out = tmp_path_factory.mktemp("routellm-evals")
    counts = convert_routellm_evals(UPSTREAM, out)
    return out, counts, load_dataset(out / "prompts.jsonl.gz", out / "agents.json")


@pytest.fixture(scope="module")
def mini_src(tmp_path_factory) -> Path:
    """A small upstream copy: 20 GSM8K rows, 30 MMLU rows, 3 MT-Bench questions (81 is contaminated)."""
    if not UPSTREAM.is_dir():
        pytest.skip(f"upstream data not at {UPSTREAM}")
    src = tmp_path_factory.mktemp("mini-routellm")
    _write_jsonl(src / FILES["gsm8k"], _jsonl(UPSTREAM / FILES["gsm8k"])[:20])
    _write_jsonl(src / FILES["mmlu"], _jsonl(UPSTREAM / FILES["mmlu"])[:30])
    questions = _jsonl(UPSTREAM / FILES["mt_bench_question"])[:3]
    qids = {q["question_id"] for q in questions}
    _write_jsonl(src / FILES["mt_bench_question"], questions)
    judgements = [j for j in _jsonl(UPSTREAM / FILES["mt_bench_judgements"]) if j["question_id"] in qids]
    _write_jsonl(src / FILES["mt_bench_judgements"], judgements)
    for key in ("gsm8k_contaminated", "mmlu_contaminated", "mt_bench_contaminated", "license"):
        shutil.copyfile(UPSTREAM / FILES[key], src / FILES[key])
    return src


def test_registered():
    assert CONVERTERS["routellm-evals"] is convert_routellm_evals


def test_counts(converted):
    _, counts, ds = converted
    assert counts == {
        "prompts": 15488,
        "agents": 2,
        "prompts_gsm8k": 1307,  # 1319 - 12 contaminated
        "prompts_mmlu": 14037,  # 14042 - 5
        "prompts_mt_bench": 144,  # (80 - 8 contaminated questions) x 2 turns
        "excluded_gsm8k": 12,
        "excluded_mmlu": 5,
        "excluded_mt_bench": 16,
        "skipped_gsm8k": 0,
        "skipped_mmlu": 0,
        "skipped_mt_bench": 0,
        "mt_bench_answers_missing": 0,
    }
    assert len(ds) == 15488
    by_bench = defaultdict(int)
    for task in ds.tasks:
        by_bench[task.split("/")[0]] += 1
    assert dict(by_bench) == {"gsm8k": 1307, "mmlu": 14037, "mt_bench": 144}
    assert len({t for t in ds.tasks if t.startswith("mmlu/")}) == 57
    assert len({t for t in ds.tasks if t.startswith("mt_bench/")}) == 8


def test_agents_and_quality(converted):
    _, _, ds = converted
    assert ds.agent_names == [WEAK, STRONG]  # cheapest first: action 0 weak, 1 strong
    assert [a.price_per_1m_tokens for a in ds.agents] == [0.24, 24.7]
    assert ds.quality.min() >= 0.0 and ds.quality.max() <= 1.0
    tasks = np.array([t.split("/")[0] for t in ds.tasks])
    binary = ds.quality[tasks != "mt_bench"]
    assert set(np.unique(binary)) == {0.0, 1.0}
    # MT-Bench: (score - 1) / 9 of a 1-10 score (half points occur)
    scores = ds.quality[tasks == "mt_bench"] * 9 + 1
    assert np.allclose(scores * 2, np.round(scores * 2), atol=1e-4)
    # the accuracies PROVENANCE.md reports (before decontamination)
    gsm8k = ds.quality[tasks == "gsm8k"].mean(0)
    mmlu = ds.quality[tasks == "mmlu"].mean(0)
    assert gsm8k == pytest.approx([0.638, 0.857], abs=0.005)
    assert mmlu == pytest.approx([0.681, 0.806], abs=0.005)


def test_mt_bench_sessions_have_two_turns_in_one_split(converted):
    _, _, ds = converted
    sessions = defaultdict(list)
    for i, (sid, turn) in enumerate(zip(ds.session_ids, ds.turns, strict=True)):
        if sid is not None:
            sessions[sid].append((turn, i))
    assert len(sessions) == 72
    assert all(sorted(t for t, _ in members) == [1, 2] for members in sessions.values())
    for seed in (0, 1):
        where = {int(i): name for name, idx in split_indices(ds, seed=seed).items() for i in idx}
        assert all(len({where[i] for _, i in members}) == 1 for members in sessions.values())
    # prompt = that turn's user message alone
    questions = {q["question_id"]: q["turns"] for q in _jsonl(UPSTREAM / FILES["mt_bench_question"])}
    for sid, members in sessions.items():
        turns = questions[int(sid.split("/")[1])]
        assert [ds.prompts[i] for _, i in sorted(members)] == turns


def test_contaminated_prompts_absent(converted):
    _, _, ds = converted
    texts = set(ds.prompts)
    for key in ("gsm8k_contaminated", "mmlu_contaminated", "mt_bench_contaminated"):
        dirty = {row["eval_prompt"] for row in _jsonl(UPSTREAM / FILES[key])}
        assert dirty and not dirty & texts, key


def test_cost_positive_and_gpt4_about_100x(converted):
    _, _, ds = converted
    assert (ds.cost_usd > 0).all()
    ratio = ds.cost_usd[:, 1] / ds.cost_usd[:, 0]
    mmlu = np.array([t.startswith("mmlu/") for t in ds.tasks])
    # MMLU: same tokens for both (prompt + 1), so exactly the price ratio 24.7 / 0.24 = 102.9
    assert np.allclose(ratio[mmlu], PRICE_PER_1M_TOKENS[STRONG] / PRICE_PER_1M_TOKENS[WEAK], rtol=1e-3)
    # GSM8K / MT-Bench: each model's own answer length, so the ratio varies around it
    assert 80 < ds.cost_usd[:, 1].sum() / ds.cost_usd[:, 0].sum() < 130
    assert 90 < np.median(ratio) < 115
    # an MT-Bench turn 2 re-sends turn 1 and its answer: dearer than turn 1
    turn = np.array([t or 0 for t in ds.turns])
    assert ds.cost_usd[turn == 2].mean() > ds.cost_usd[turn == 1].mean()


def test_shipped_data_equals_a_fresh_conversion(converted):
    out, _, ds = converted
    shipped = load_dataset(SHIPPED / "prompts.jsonl.gz", SHIPPED / "agents.json")
    assert shipped.fingerprint() == ds.fingerprint()
    assert shipped.prompts == ds.prompts and shipped.tasks == ds.tasks and shipped.session_ids == ds.session_ids
    with gzip.open(SHIPPED / "prompts.jsonl.gz") as a, gzip.open(out / "prompts.jsonl.gz") as b:
        assert a.read() == b.read()
    for name in ("agents.json", "LICENSE", "ATTRIBUTION.md"):
        assert (SHIPPED / name).read_bytes() == (out / name).read_bytes(), name
    assert (SHIPPED / "prompts.jsonl.gz").stat().st_size < 4_000_000


def test_invalid_values_are_skipped_and_counted(mini_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(mini_src, src)
    gsm8k = _jsonl(src / FILES["gsm8k"])
    gsm8k[5][STRONG] = "N/A"
    _write_jsonl(src / FILES["gsm8k"], gsm8k)
    judgements = _jsonl(src / FILES["mt_bench_judgements"])
    bad = next(j for j in judgements if j["question_id"] == 82 and j["turn"] == 2)
    bad["score"] = -1  # FastChat's "judge gave no rating"
    unquoted = next(j for j in judgements if j["question_id"] == 83 and j["turn"] == 1 and j["model"] == STRONG)
    unquoted["user_prompt"] = "a judge prompt that does not quote the answer"
    _write_jsonl(src / FILES["mt_bench_judgements"], judgements)
    counts = convert_routellm_evals(src, tmp_path / "out")
    assert counts["mt_bench_answers_missing"] == 1  # costed with MT_BENCH_OUTPUT_TOKENS
    assert counts["excluded_gsm8k"] == 4  # GSM8K test rows 0, 1, 2 and 18
    assert counts["skipped_gsm8k"] == 1 and counts["prompts_gsm8k"] == 15
    assert counts["excluded_mt_bench"] == 2 and counts["skipped_mt_bench"] == 1
    ds = load_dataset(tmp_path / "out" / "prompts.jsonl.gz", tmp_path / "out" / "agents.json")
    assert "routellm-gsm8k-5" not in ds.ids and "routellm-mt_bench-82-2" not in ds.ids
    assert [i for i in ds.ids if "mt_bench" in i] == ["routellm-mt_bench-82-1", "routellm-mt_bench-83-1",
                                                      "routellm-mt_bench-83-2"]
    row = ds.ids.index("routellm-mt_bench-83-1")
    assert ds.cost_usd[row, 1] > PRICE_PER_1M_TOKENS[STRONG] * MT_BENCH_OUTPUT_TOKENS / 1e6


def test_malformed_source(mini_src, tmp_path):
    with pytest.raises(DataError, match="upstream file not found"):
        convert_routellm_evals(tmp_path / "nothing", tmp_path / "out")
    src = tmp_path / "src"
    shutil.copytree(mini_src, src)
    path = src / FILES["mt_bench_judgements"]
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + "{not json\n" + "".join(lines[2:]), encoding="utf-8")
    with pytest.raises(DataError, match=rf"{FILES['mt_bench_judgements']}:3: invalid JSON"):
        convert_routellm_evals(src, tmp_path / "out")
    path.write_text("".join(lines), encoding="utf-8")
    rows = _jsonl(src / FILES["mmlu"])
    del rows[3]["prompt"]
    _write_jsonl(src / FILES["mmlu"], rows)
    with pytest.raises(DataError, match=r":4: missing field 'prompt'"):
        convert_routellm_evals(src, tmp_path / "out")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_convert(mini_src, tmp_path):
    out = tmp_path / "out"
    proc = _cli("data", "convert", "routellm-evals", "--src", str(mini_src), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    # 16 GSM8K + 30 MMLU (none contaminated among the first 30) + 2 questions x 2 turns
    assert proc.stdout.strip() == f"50 prompts x 2 agents written to {out}"
    assert sorted(p.name for p in out.iterdir()) == ["ATTRIBUTION.md", "LICENSE", "agents.json", "prompts.jsonl.gz"]
    assert len(load_dataset(out / "prompts.jsonl.gz", out / "agents.json")) == 50


def test_cli_bad_src(tmp_path):
    proc = _cli("data", "convert", "routellm-evals", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "upstream file not found" in lines[0]
