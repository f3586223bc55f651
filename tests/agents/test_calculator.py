"""The calculator agent: exact results, refusal of unsafe or huge expressions, the no-expression answer."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from agents.base import GenerationParams, Message
from agents.calculator import (
    MAX_BITS,
    NO_EXPRESSION_ANSWER,
    CalculatorAgent,
    CalculatorError,
    answer,
    evaluate,
    find_expression,
    format_number,
)


@pytest.mark.parametrize(("prompt", "reply"), [
    ("What is 37 * 49 + 12?", "37 * 49 + 12 = 1825"),
    ("Compute (2/3 + 1/6) * 12", "(2/3 + 1/6) * 12 = 10"),
    ("what's 2**10 - 7", "2**10 - 7 = 1017"),
    ("17 % 5", "17 % 5 = 2"),
    ("0.1 + 0.2", "0.1 + 0.2 = 0.3"),
    ("1/3", "1/3 = 1/3 ≈ 0.333333"),
    ("-5/2", "-5/2 = -2.5"),
    ("2**-3", "2**-3 = 0.125"),
    ("What is 2^10?", "2**10 = 1024"),
    ("What is 12 x 12?", "12 * 12 = 144"),
    ("7 plus 5 times 2", "7 + 5 * 2 = 17"),
    ("1,000 + 2,500", "1000 + 2500 = 3500"),
    ("-7 // 2 and more", "-7 // 2 = -4"),
    ("Compute 3 + 4.", "3 + 4 = 7"),
    ("(see 3+4)", "3+4 = 7"),
])
def test_answers_are_exact(prompt, reply):
    assert answer(prompt) == reply


def test_values_are_fractions_not_floats():
    assert evaluate("0.1 + 0.2") == Fraction(3, 10)
    assert evaluate("10 / 4") == Fraction(5, 2)
    assert evaluate("2 ** 200 + 1") == 2**200 + 1  # past float precision
    assert evaluate("7 % -3") == -2  # Python's floor semantics
    assert evaluate("(-2) ** 3") == -8


def test_format_number():
    assert format_number(Fraction(1825)) == "1825"
    assert format_number(Fraction(-1, 8)) == "-0.125"
    assert format_number(Fraction(1, 1000)) == "0.001"
    assert format_number(Fraction(4, 6)) == "2/3"
    assert format_number(Fraction(-22, 7)) == "-22/7"


@pytest.mark.parametrize("expression", ["9**9**9", "10**5000", "2**" + str(MAX_BITS + 1), "(10**900) * (10**900)",
                                        "1 / 10**1001"])
def test_huge_results_are_refused_at_once(expression):
    start = time.monotonic()
    with pytest.raises(CalculatorError, match="too large"):
        evaluate(expression)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize("expression", [
    "__import__('os').system('true')", "x + 1", "abs(-1)", "(1).real", "1 if 1 else 2", "[1, 2]", "1 < 2",
    "'a' * 3", "True + 1", "1j * 2", "5 ^ 3", "1 << 40", "lambda: 1",
])
def test_anything_but_arithmetic_is_refused(expression):
    with pytest.raises(CalculatorError):
        evaluate(expression)


@pytest.mark.parametrize(("expression", "why"), [("1 / 0", "division by zero"), ("5 % 0", "division by zero"),
                                                  ("0 ** -1", "division by zero"), ("2 ** 0.5", "whole-number"),
                                                  ("1 +", "well-formed"), ("1" + "+1" * 300, "too long")])
def test_undefined_or_malformed_expressions_say_why(expression, why):
    with pytest.raises(CalculatorError, match=why):
        evaluate(expression)


def test_a_refused_expression_is_answered_in_words():
    assert answer("What is 9**9**9?").startswith("I cannot compute 9**9**9: the exponent")
    assert answer("what is 1/0") == "I cannot compute 1/0: division by zero."


@pytest.mark.parametrize("prompt", ["Write a haiku about autumn", "Tell me about COVID-19", "I have 3 cats",
                                    "What is -5?", "1e5+1", "os.system(1+1)", ""])
def test_no_expression_gets_the_fixed_answer(prompt):
    assert find_expression(prompt) is None
    assert answer(prompt) == NO_EXPRESSION_ANSWER


def test_the_longest_expression_wins():
    assert find_expression("Is 2+2 or 10 * 10 - 1 bigger?") == "10 * 10 - 1"
    assert find_expression("first 1+2 then 3+4") == "1+2"


def test_agent_answers_the_last_user_message_with_pricing_token_counts():
    messages = [Message("system", "You are a calculator."), Message("user", "2+2"),
                Message("assistant", "2+2 = 4"), Message("user", "What is 6 * 7?")]
    done = CalculatorAgent().complete(messages, GenerationParams())
    assert done.text == "6 * 7 = 42"
    assert done.finish_reason == "stop"
    text = "\n".join(m.content for m in messages)
    assert done.prompt_tokens == -(-len(text) // 4)
    assert done.completion_tokens == 3  # ceil(10 / 4)


def test_agent_cuts_at_max_tokens_and_streams_the_same_text():
    agent = CalculatorAgent()
    short = agent.complete([Message("user", "hello")], GenerationParams(max_tokens=2))
    assert (short.text, short.finish_reason, short.completion_tokens) == (NO_EXPRESSION_ANSWER[:8], "length", 2)
    *pieces, done = agent.stream([Message("user", "Compute (2/3 + 1/6) * 12")], GenerationParams())
    assert len(pieces) > 1
    assert "".join(pieces) == done.text == "(2/3 + 1/6) * 12 = 10"
