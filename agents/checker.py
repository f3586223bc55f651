"""The demo's quality judge: exact for arithmetic, "did it answer" for the rest.

- A prompt that holds an arithmetic expression (:func:`agents.calculator.find_expression`) scores
  1.0 when the answer contains the exact value as a number (the integer, the terminating decimal,
  or the reduced fraction), else 0.0.
- Any other prompt scores 0.0 for an empty answer or the calculator's refusal
  (:data:`~agents.calculator.NO_EXPRESSION_ANSWER`), else 1.0: the demo has no reference answers
  for open questions, so it only tells an answer from a refusal.
"""

from __future__ import annotations

import re

from agents.calculator import NO_EXPRESSION_ANSWER, CalculatorError, evaluate, find_expression, format_number

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def numbers_in(text: str) -> set[str]:
    """The numbers written in ``text`` (thousands separators dropped)."""
    return {m.group(0).replace(",", "") for m in _NUMBER.finditer(text)}


def expected_value(prompt: str) -> str | None:
    """The exact value of the prompt's arithmetic (:func:`~agents.calculator.format_number`), or None
    when it has none (or it cannot be computed)."""
    expression = find_expression(prompt)
    if expression is None:
        return None
    try:
        return format_number(evaluate(expression))
    except CalculatorError:
        return None


def score(prompt: str, answer: str) -> float:
    """The answer's quality in [0, 1] (module docstring)."""
    expected = expected_value(prompt)
    if expected is not None:
        return 1.0 if expected in numbers_in(answer) else 0.0
    text = answer.strip()
    return 0.0 if not text or text.startswith(NO_EXPRESSION_ANSWER[:30]) else 1.0
