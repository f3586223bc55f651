"""Convert RouteLLM's evaluation data (lm-sys/RouteLLM, Apache-2.0) to the dataset contract.

Upstream layout (``../shared/data/routellm-evals``, from ``routellm/evals/`` of
https://github.com/lm-sys/RouteLLM at commit ``0b64fdafe049e596a3f5657c219329f24af24198``):

* ``gsm8k_responses.jsonl.gz``: ``prompt``, one correctness column per model (``"True"`` /
  ``"False"``) and ``<model>_response`` (the answer text);
* ``mmlu_responses.jsonl.gz``: ``subject``, ``prompt`` and the two correctness columns;
* ``mt_bench_question.jsonl``: ``question_id``, ``category``, ``turns`` (2 user messages);
* ``mt_bench_judgements.jsonl``: ``question_id``, ``model``, ``turn`` (1 or 2), ``score`` (GPT-4
  judge, 1-10, a string or a number) and ``user_prompt`` (the judge prompt, which quotes the
  model's answers);
* ``{gsm8k,mmlu,mt_bench}_contaminated_prompts.jsonl``: ``eval_prompt`` (plus ``train_prompt``,
  ``train_idx``, ``eval_idx``), the benchmark prompts RouteLLM found in its router training data.

Agents, cheapest first (action order): ``mistralai/Mixtral-8x7B-Instruct-v0.1`` (RouteLLM's weak
model) and ``gpt-4-1106-preview`` (its strong model). Prices are the RouteLLM paper's blended
figures, :data:`PRICE_PER_1M_TOKENS` (0.24 and 24.7 USD per 1M tokens, input and output alike;
quoted from the paper via PROVENANCE.md, not re-checked against a price list).

Prompts:

* GSM8K: one per row, task ``gsm8k``, quality 1.0 / 0.0 from ``"True"`` / ``"False"``.
* MMLU: one per row, task ``mmlu/<subject>`` (57 subjects; ``task.split("/")[0]`` gives the
  benchmark), quality 1.0 / 0.0. 105 question texts occur twice upstream; both rows are kept
  (the splits put identical texts together).
* MT-Bench: one prompt per turn, ``session_id = "mt_bench/<question_id>"``, ``turn`` 1 or 2, task
  ``mt_bench/<category>``. The prompt text is that turn's user message alone (turn 2 does not
  repeat turn 1: a client sends the new message with its ``session_id``). Quality is the judge's
  score of that model on that turn mapped to [0, 1] as ``(score - 1) / 9``. RouteLLM uses the raw
  1-10 score (averaged over a question's two turns, routing once on turn 1); its APGR / PGR is a
  ratio of score differences, so this affine map leaves it unchanged.

Contamination: as RouteLLM's ``routellm/evals/benchmarks.py``, a GSM8K or MMLU row is dropped when
its ``prompt`` equals (exactly) an ``eval_prompt`` of the benchmark's contaminated file, and an
MT-Bench question (both turns) when either turn does.

Rows whose correctness is not ``"True"`` / ``"False"`` (or a boolean), and MT-Bench turns without
a valid score (a number in [1, 10]) for both models, are skipped and counted.

Cost rule (the data has no cost or token count)::

    cost_usd = price_per_1m_tokens * (prompt_tokens + output_tokens) / 1e6

with tokens counted by the same WordPiece tokenizer as :mod:`env.convert.llmrouter_dc` (that of
all-MiniLM-L6-v2, not the models' own tokenizers):

* GSM8K: ``prompt`` + that model's ``<model>_response``;
* MMLU: ``prompt`` + :data:`MMLU_OUTPUT_TOKENS` (1: the models answer with a letter);
* MT-Bench turn 1: the user message + that model's answer; turn 2: the conversation an API call
  re-sends (turn-1 message, that model's turn-1 answer, turn-2 message) + its turn-2 answer. The
  answers are read from the judge prompt; where one cannot be found there,
  :data:`MT_BENCH_OUTPUT_TOKENS` stands for it.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from contract.errors import DataError
from env.convert.llmrouter_dc import _token_counter
from env.dataset import open_text

WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
#: Blended USD per 1M tokens, from the RouteLLM paper (Ong et al. 2024, arXiv 2406.18665).
PRICE_PER_1M_TOKENS: dict[str, float] = {WEAK: 0.24, STRONG: 24.7}
#: Agents in action order (cheapest first) with their descriptions.
AGENTS: dict[str, str] = {
    WEAK: "Mixtral 8x7B Instruct v0.1 (Mistral AI), RouteLLM's weak model; 0.24 USD per 1M tokens "
    "(RouteLLM paper, blended)",
    STRONG: "GPT-4 Turbo (OpenAI gpt-4-1106-preview), RouteLLM's strong model; 24.7 USD per 1M tokens "
    "(RouteLLM paper, blended)",
}
#: Assumed completion length of an MMLU answer (a letter).
MMLU_OUTPUT_TOKENS = 1
#: Assumed completion length of an MT-Bench answer when the judge prompt does not quote it
#: (about the median answer length in the upstream judgements, 305 tokens).
MT_BENCH_OUTPUT_TOKENS = 300

FILES = {
    "gsm8k": "gsm8k_responses.jsonl.gz",
    "mmlu": "mmlu_responses.jsonl.gz",
    "mt_bench_question": "mt_bench_question.jsonl",
    "mt_bench_judgements": "mt_bench_judgements.jsonl",
    "gsm8k_contaminated": "gsm8k_contaminated_prompts.jsonl",
    "mmlu_contaminated": "mmlu_contaminated_prompts.jsonl",
    "mt_bench_contaminated": "mt_bench_contaminated_prompts.jsonl",
    "license": "LICENSE",
}

_T1_ANSWER = re.compile(r"\[The Start of Assistant's Answer\]\n(.*?)\n\[The End of Assistant's Answer\]", re.S)
_CONV_START = "<|The Start of Assistant A's Conversation with User|>"
_CONV_END = "<|The End of Assistant A's Conversation with User|>"
_ASSISTANT = "\n\n### Assistant A:\n"
_USER = "\n\n### User:\n"


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(path, f"invalid JSON: {exc.msg}", lineno) from None
                if not isinstance(row, dict):
                    raise DataError(path, "line is not a JSON object", lineno)
                rows.append((lineno, row))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read file: {exc}") from None
    return rows


def _field(path: Path, lineno: int, row: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in row:
        raise DataError(path, f"missing field {key!r}", lineno)
    if not isinstance(row[key], kind):
        raise DataError(path, f"field {key!r} has the wrong type ({type(row[key]).__name__})", lineno)
    return row[key]


def _correct(value: Any) -> float | None:
    """1.0 / 0.0 from RouteLLM's ``"True"`` / ``"False"`` (or a boolean); None for anything else."""
    if isinstance(value, bool):
        return float(value)
    return {"True": 1.0, "False": 0.0}.get(value) if isinstance(value, str) else None


def _judge_score(value: Any) -> float | None:
    """The judge's 1-10 score as a float; None when missing, unparsable or out of range (-1: failed)."""
    if isinstance(value, bool):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) and 1.0 <= score <= 10.0 else None


def _answers(user_prompt: str, turn: int) -> list[str] | None:
    """The model's answers quoted in a judge prompt: ``[a1]`` for turn 1, ``[a1, a2]`` for turn 2."""
    if turn == 1:
        found = _T1_ANSWER.findall(user_prompt)
        return [found[0]] if len(found) == 1 else None
    if user_prompt.count(_CONV_START) != 1 or user_prompt.count(_CONV_END) != 1:
        return None
    conversation = user_prompt.split(_CONV_START)[1].split(_CONV_END)[0]
    parts = conversation.split(_ASSISTANT)
    if len(parts) != 3 or _USER not in parts[1]:
        return None
    return [parts[1].rsplit(_USER, 1)[0], parts[2].rstrip()]


def _contaminated(path: Path) -> set[str]:
    return {_field(path, n, row, "eval_prompt", str) for n, row in _read_jsonl(path)}


def convert_routellm_evals(src: str | Path, out: str | Path) -> dict[str, int]:
    """Write ``prompts.jsonl.gz``, ``agents.json``, ``LICENSE`` and ``ATTRIBUTION.md`` to ``out``.

    Returns:
        ``{"prompts", "agents"}`` and, per benchmark ``b`` in gsm8k / mmlu / mt_bench,
        ``prompts_<b>`` (written), ``excluded_<b>`` (contaminated prompts dropped) and
        ``skipped_<b>`` (rows without a valid correctness or score); ``mt_bench_answers_missing``
        (answers not quoted in a judge prompt, costed with :data:`MT_BENCH_OUTPUT_TOKENS`).

    Raises:
        DataError: a missing upstream file, a bad line, a judgement of an unknown question, or
            nothing left to write.
    """
    src, out = Path(src), Path(out)
    paths = {k: src / v for k, v in FILES.items()}
    for p in paths.values():
        if not p.is_file():
            raise DataError(p, "upstream file not found")
    stats = {f"{k}_{b}": 0 for k in ("prompts", "excluded", "skipped") for b in ("gsm8k", "mmlu", "mt_bench")}
    stats["mt_bench_answers_missing"] = 0
    # (record without outcomes, per-agent [texts counted as prompt + output], per-agent extra tokens)
    items: list[tuple[dict[str, Any], dict[str, list[str]], dict[str, int]]] = []

    for bench in ("gsm8k", "mmlu"):
        path, dirty = paths[bench], _contaminated(paths[f"{bench}_contaminated"])
        per_subject: dict[str, int] = {}
        for lineno, row in _read_jsonl(path):
            prompt = _field(path, lineno, row, "prompt", str)
            if bench == "mmlu":
                subject = _field(path, lineno, row, "subject", str)
                index = per_subject[subject] = per_subject.get(subject, -1) + 1
                rid, task = f"routellm-mmlu-{subject}-{index}", f"mmlu/{subject}"
            else:
                rid, task = f"routellm-gsm8k-{lineno - 1}", "gsm8k"
            if prompt in dirty:
                stats[f"excluded_{bench}"] += 1
                continue
            quality = {m: _correct(row.get(m)) for m in AGENTS}
            if any(q is None for q in quality.values()) or not prompt.strip():
                stats[f"skipped_{bench}"] += 1
                continue
            if bench == "gsm8k":
                texts = {m: [prompt, _field(path, lineno, row, f"{m}_response", str)] for m in AGENTS}
                extra = dict.fromkeys(AGENTS, 0)
            else:
                texts = {m: [prompt] for m in AGENTS}
                extra = dict.fromkeys(AGENTS, MMLU_OUTPUT_TOKENS)
            rec = {"id": rid, "prompt": prompt, "task": task, "session_id": None, "turn": None, "quality": quality}
            items.append((rec, texts, extra))
        stats[f"prompts_{bench}"] = sum(1 for rec, _, _ in items if rec["task"].split("/")[0] == bench)

    items.extend(_mt_bench(paths, stats))
    stats["prompts_mt_bench"] = sum(1 for rec, _, _ in items if rec["session_id"])
    if not items:
        raise DataError(src, "no prompts left to write (empty upstream files, or every row skipped)")

    # count every distinct text once
    distinct = sorted({t for _, texts, _ in items for ts in texts.values() for t in ts})
    tokens = dict(zip(distinct, _token_counter()(distinct), strict=True))

    out.mkdir(parents=True, exist_ok=True)
    agents = [
        {
            "name": m,
            "description": d,
            "price_per_1m_tokens": PRICE_PER_1M_TOKENS[m],
            "cost_per_call_usd": None,
            "capacity": None,
        }
        for m, d in AGENTS.items()
    ]
    (out / "agents.json").write_text(json.dumps({"agents": agents}, indent=2) + "\n", encoding="utf-8")
    with gzip.GzipFile(out / "prompts.jsonl.gz", "wb", mtime=0) as gz:
        for rec, texts, extra in items:
            outcomes = {
                m: {
                    "quality": rec["quality"][m],
                    "cost_usd": round(PRICE_PER_1M_TOKENS[m] * (sum(tokens[t] for t in texts[m]) + extra[m]) / 1e6, 12),
                }
                for m in AGENTS
            }
            line = {k: v for k, v in rec.items() if k != "quality"} | {"outcomes": outcomes}
            gz.write((json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8"))
    shutil.copyfile(paths["license"], out / "LICENSE")
    stats["prompts"], stats["agents"] = len(items), len(AGENTS)
    (out / "ATTRIBUTION.md").write_text(_attribution(stats), encoding="utf-8")
    return {"prompts": stats.pop("prompts"), "agents": stats.pop("agents"), **stats}


def _mt_bench(
    paths: dict[str, Path], stats: dict[str, int]
) -> list[tuple[dict[str, Any], dict[str, list[str]], dict[str, int]]]:
    qpath, jpath = paths["mt_bench_question"], paths["mt_bench_judgements"]
    dirty = _contaminated(paths["mt_bench_contaminated"])
    questions: dict[int, tuple[str, list[str]]] = {}
    for lineno, row in _read_jsonl(qpath):
        qid = _field(qpath, lineno, row, "question_id", int)
        category = _field(qpath, lineno, row, "category", str)
        turns = _field(qpath, lineno, row, "turns", list)
        if len(turns) != 2 or not all(isinstance(t, str) and t.strip() for t in turns):
            raise DataError(qpath, "turns must be 2 non-empty user messages", lineno)
        if qid in questions:
            raise DataError(qpath, f"duplicate question_id {qid}", lineno)
        questions[qid] = (category, turns)
    # (question_id, model, turn) -> (score or None, answers or None)
    judged: dict[tuple[int, str, int], tuple[float | None, list[str] | None]] = {}
    for lineno, row in _read_jsonl(jpath):
        model = _field(jpath, lineno, row, "model", str)
        if model not in AGENTS:
            continue  # judgements of other models are not needed
        qid = _field(jpath, lineno, row, "question_id", int)
        turn = _field(jpath, lineno, row, "turn", int)
        if qid not in questions:
            raise DataError(jpath, f"judgement of unknown question_id {qid}", lineno)
        if turn not in (1, 2):
            raise DataError(jpath, f"turn must be 1 or 2, got {turn}", lineno)
        if (qid, model, turn) in judged:
            raise DataError(jpath, f"second judgement of question {qid}, turn {turn}, {model}", lineno)
        user_prompt = row.get("user_prompt")
        answers = _answers(user_prompt, turn) if isinstance(user_prompt, str) else None
        judged[qid, model, turn] = (_judge_score(row.get("score")), answers)

    items = []
    for qid, (category, turns) in questions.items():
        if any(t in dirty for t in turns):
            stats["excluded_mt_bench"] += 2
            continue
        for turn in (1, 2):
            scores = {m: judged.get((qid, m, turn), (None, None))[0] for m in AGENTS}
            if any(s is None for s in scores.values()):
                stats["skipped_mt_bench"] += 1
                continue
            texts: dict[str, list[str]] = {}
            extra: dict[str, int] = {}
            for m in AGENTS:
                answers = judged[qid, m, turn][1]
                if answers is None:
                    stats["mt_bench_answers_missing"] += 1
                    # turn 2 also re-sends the unknown turn-1 answer
                    texts[m], extra[m] = turns[:turn], MT_BENCH_OUTPUT_TOKENS * turn
                else:
                    texts[m] = [turns[0], answers[0]] if turn == 1 else [turns[0], answers[0], turns[1], answers[1]]
                    extra[m] = 0
            rec = {
                "id": f"routellm-mt_bench-{qid}-{turn}",
                "prompt": turns[turn - 1],
                "task": f"mt_bench/{category}",
                "session_id": f"mt_bench/{qid}",
                "turn": turn,
                "quality": {m: round((s - 1.0) / 9.0, 6) for m, s in scores.items()},
            }
            items.append((rec, texts, extra))
    return items


def _attribution(stats: dict[str, int]) -> str:
    s = stats
    return f"""# routellm-evals, converted

{s["prompts"]} prompts x {s["agents"]} LLMs (`gpt-4-1106-preview` and `mistralai/Mixtral-8x7B-Instruct-v0.1`):
{s["prompts_gsm8k"]} GSM8K, {s["prompts_mmlu"]} MMLU and {s["prompts_mt_bench"]} MT-Bench prompts (one per turn; the two
turns of a question share a `session_id`), converted by `agent-router data convert routellm-evals`
(`env/convert/routellm_evals.py`) into this project's dataset format (`docs/dataset-format.md`).

* **Source:** RouteLLM, https://github.com/lm-sys/RouteLLM, commit
  `0b64fdafe049e596a3f5657c219329f24af24198`: `routellm/evals/gsm8k/gsm8k_responses.csv`,
  `routellm/evals/mmlu/responses/mmlu_<subject>.csv`, `routellm/evals/mt_bench/question.jsonl`,
  `routellm/evals/mt_bench/judgements.jsonl` and the three `contaminated_prompts.jsonl` (read as JSON
  Lines, the 57 MMLU files concatenated with their subject).
* **Licence:** Apache License 2.0; the upstream `LICENSE` is copied beside this file. The questions
  come from GSM8K (MIT), MMLU (MIT) and MT-Bench (FastChat, Apache-2.0); RouteLLM graded the answers
  (MT-Bench with a GPT-4 judge).
* **Changed here:** one prompt a line with an outcome per model. `quality` is the upstream correctness
  (`"True"` 1.0, `"False"` 0.0) or, for MT-Bench, the judge's 1-10 score mapped to `(score - 1) / 9`.
  `cost_usd` is derived: the RouteLLM paper's blended prices (24.7 and 0.24 USD per 1M tokens) times
  token counts of this project's choosing (MiniLM WordPiece tokenizer; the prompt plus the model's
  answer where the data has it, 1 output token for MMLU); see `env/convert/routellm_evals.py`. The
  model answers and judge texts are not included. No score was changed.
* **Removed:** the prompts RouteLLM marks as contaminated: {s["excluded_gsm8k"]} GSM8K, {s["excluded_mmlu"]} MMLU and
  {s["excluded_mt_bench"]} MT-Bench prompts ({s["excluded_mt_bench"] // 2} questions x 2 turns); rows without a valid
  correctness or score: {s["skipped_gsm8k"]} GSM8K, {s["skipped_mmlu"]} MMLU, {s["skipped_mt_bench"]} MT-Bench.
"""
