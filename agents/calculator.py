"""An exact calculator tool agent: finds the arithmetic expression in a prompt and evaluates it.

The rules (docs/agents.md repeats them):

- **Extraction** (:func:`find_expression`). ``×``/``·`` are ``*``, ``÷`` is ``/``, ``−`` is ``-``,
  ``^`` is ``**`` (power, not XOR); the words ``plus``, ``minus``, ``times``, ``multiplied by``,
  ``divided by``, ``mod``/``modulo`` and ``to the power of`` are their operators; ``x`` between
  two numbers with spaces around it is ``*``; a comma between digits followed by three digits is a
  thousands separator. The candidates are the runs of digits, ``.``, ``+ - * / % ( )`` and spaces
  in what is left, trimmed of dangling operators and unmatched parentheses; a run that touches a
  letter with no space between is not one (``1e5+1``, ``v2-1``). A candidate counts when it parses
  and has at least one binary operator (so ``-5`` alone is not arithmetic).
  The longest one wins (the first of equally long ones).
- **Evaluation** (:func:`evaluate`): a walk over Python's AST that allows only numeric literals
  (integers and decimals, read exactly from their text), ``+ - * / // % **``, unary ``+``/``-``
  and parentheses; no names, calls, attributes, comparisons or anything else. Every value is a
  :class:`fractions.Fraction`, so ``/`` is exact. ``//`` and ``%`` follow Python (floor). ``**``
  takes whole exponents of magnitude at most :data:`MAX_BITS`; a value whose numerator or
  denominator would pass :data:`MAX_BITS` bits (about 1,000 decimal digits) is refused before it is
  computed, so ``9**9**9`` costs nothing. At most :data:`MAX_EXPRESSION_CHARS` characters.
- **The answer** (:func:`answer`): ``<expression> = <value>``, the value an integer (``1825``), a
  decimal when it terminates (``0.125``, ``-2.5``), or else the reduced fraction followed by six
  significant digits (``2/3 ≈ 0.666667``). Without an expression the answer is
  :data:`NO_EXPRESSION_ANSWER`, the agent's failure mode on prompts that are not arithmetic.
"""

from __future__ import annotations

import ast
import decimal
import re
from collections.abc import Iterator, Sequence
from fractions import Fraction

from agents.base import Completion, GenerationParams, Message, last_user_text
from contract.pricing import CHARS_PER_TOKEN, prompt_tokens

#: The largest numerator or denominator, in bits, of any value (input, intermediate or result).
MAX_BITS = 3322  # 2**3322 ~ 10**1000
#: The longest expression evaluated, in characters.
MAX_EXPRESSION_CHARS = 500
#: The answer when the prompt holds no arithmetic expression.
NO_EXPRESSION_ANSWER = (
    "I can only do arithmetic: send an expression such as 37 * 49 + 12, with numbers, "
    "+ - * / // % ** and parentheses."
)

_SYMBOLS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "^": "**"})
_WORDS = [
    (re.compile(r"\bto the power of\b", re.I), " ** "),
    (re.compile(r"\bmultiplied by\b", re.I), " * "),
    (re.compile(r"\bdivided by\b", re.I), " / "),
    (re.compile(r"\bplus\b", re.I), " + "),
    (re.compile(r"\bminus\b", re.I), " - "),
    (re.compile(r"\btimes\b", re.I), " * "),
    (re.compile(r"\bmod(?:ulo)?\b", re.I), " % "),
    (re.compile(r"(?<=[\d)])\s+[xX]\s+(?=[\d(])"), " * "),
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),
]
_RUN = re.compile(r"[\d\s.+\-*/%()]+")
_NEVER_LAST = "+-*/%.( \t\r\n"
_NEVER_FIRST = "*/%) \t\r\n"
_OPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: Fraction(a // b),
    ast.Mod: lambda a, b: a % b,
}
_OP_NAMES = {ast.BitXor: "^", ast.BitAnd: "&", ast.BitOr: "|", ast.LShift: "<<", ast.RShift: ">>",
             ast.MatMult: "@"}


class CalculatorError(ValueError):
    """An expression the calculator refuses: not arithmetic, too large, or undefined (division by zero)."""


def _trim(run: str) -> str:
    """``run`` without dangling operators at its ends nor unmatched parentheses there; spaces collapsed."""
    s = " ".join(run.split())
    while True:
        before = s
        s = s.rstrip(_NEVER_LAST).lstrip(_NEVER_FIRST)
        if s.startswith(".") and not s[1:2].isdigit():
            s = s[1:]
        opened, closed = s.count("("), s.count(")")
        if opened > closed and s.startswith("("):
            s = s[1:]
        elif closed > opened and s.endswith(")"):
            s = s[:-1]
        if s == before:
            return s


def _has_binary_operator(expression: str) -> bool:
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return any(isinstance(node, ast.BinOp) for node in ast.walk(tree))


def normalise(text: str) -> str:
    """``text`` with operator symbols and words replaced by Python's operators (module docstring)."""
    text = text.translate(_SYMBOLS)
    for pattern, replacement in _WORDS:
        text = pattern.sub(replacement, text)
    return text


def _glued(text: str, start: int, end: int) -> bool:
    """True when the run ``text[start:end]`` touches a letter with no space between (``1e5+1``, ``v2-1``)."""
    return (start > 0 and text[start - 1].isalpha() and not text[start].isspace()) or \
        (end < len(text) and text[end].isalpha() and not text[end - 1].isspace())


def find_expression(text: str) -> str | None:
    """The arithmetic expression in ``text``, in Python's syntax (``^`` as ``**``), or None.

    The longest candidate run that parses and has a binary operator (module docstring); its spaces
    are collapsed.
    """
    best: str | None = None
    text = normalise(text)
    for match in _RUN.finditer(text):
        if _glued(text, match.start(), match.end()):
            continue
        candidate = _trim(match.group())
        if (best is None or len(candidate) > len(best)) and len(candidate) <= MAX_EXPRESSION_CHARS \
                and any(c.isdigit() for c in candidate) and _has_binary_operator(candidate):
            best = candidate
    return best


def _check_size(value: Fraction) -> Fraction:
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise CalculatorError(f"the result would be too large (more than about {_digits()} digits)")
    return value


def _digits() -> int:
    return round(MAX_BITS * 0.30103)


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise CalculatorError("only whole-number exponents are supported")
    e = abs(exponent.numerator)
    if e > MAX_BITS:
        raise CalculatorError(f"the exponent {exponent} is too large (at most {MAX_BITS})")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero")
    for part in (base.numerator, base.denominator):
        if (abs(part).bit_length() - 1) * e + 1 > MAX_BITS:
            raise CalculatorError(f"the result would be too large (more than about {_digits()} digits)")
    return _check_size(base**exponent.numerator)


def _literal(node: ast.Constant, source: str) -> Fraction:
    value = node.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CalculatorError(f"{value!r} is not a number")
    if isinstance(value, int):
        return _check_size(Fraction(value))
    text = ast.get_source_segment(source, node) or repr(value)
    try:
        return _check_size(Fraction(decimal.Decimal(text)))
    except (decimal.InvalidOperation, ValueError, OverflowError):
        raise CalculatorError(f"{text} is not a number the calculator reads") from None


def _eval(node: ast.AST, source: str) -> Fraction:
    if isinstance(node, ast.Constant):
        return _literal(node, source)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval(node.operand, source)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        if type(node.op) in _OP_NAMES:
            raise CalculatorError(f"the operator {_OP_NAMES[type(node.op)]} is not arithmetic here")
        left, right = _eval(node.left, source), _eval(node.right, source)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if right == 0 and isinstance(node.op, ast.Div | ast.FloorDiv | ast.Mod):
            raise CalculatorError("division by zero")
        return _check_size(_OPS[type(node.op)](left, right))
    raise CalculatorError("only numbers, + - * / // % ** and parentheses are allowed")


def evaluate(expression: str) -> Fraction:
    """The exact value of an arithmetic ``expression`` in Python's syntax.

    Raises:
        CalculatorError: it does not parse, uses anything but numbers, ``+ - * / // % **``, unary
            signs and parentheses, is longer than :data:`MAX_EXPRESSION_CHARS`, divides by zero,
            has a fractional exponent, or a value would pass :data:`MAX_BITS` bits.
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is too long (more than {MAX_EXPRESSION_CHARS} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("it is not a well-formed arithmetic expression") from None
    try:
        return _eval(tree.body, expression.strip())
    except RecursionError:
        raise CalculatorError("the expression is nested too deeply") from None


def terminates(value: Fraction) -> bool:
    """True when ``value`` has a finite decimal expansion (its denominator is ``2**a * 5**b``)."""
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


def format_number(value: Fraction) -> str:
    """``value`` exactly: an integer (``"1825"``), a terminating decimal (``"-2.5"``), or a reduced
    fraction (``"2/3"``)."""
    if value.denominator == 1:
        return str(value.numerator)
    if not terminates(value):
        return f"{value.numerator}/{value.denominator}"
    places = 0
    scaled = value
    while scaled.denominator != 1:
        scaled *= 10
        places += 1
    digits = str(abs(scaled.numerator)).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def approximate(value: Fraction, significant: int = 6) -> str:
    """``value`` rounded to ``significant`` significant digits (``"0.666667"``; exponent notation when huge or tiny)."""
    with decimal.localcontext() as ctx:
        ctx.prec = significant
        return str(decimal.Decimal(value.numerator) / decimal.Decimal(value.denominator))


def answer(text: str) -> str:
    """The calculator's reply to a prompt ``text``: ``"<expression> = <value>"``, ``"I cannot
    compute <expression>: <why>."``, or :data:`NO_EXPRESSION_ANSWER` (module docstring)."""
    expression = find_expression(text)
    if expression is None:
        return NO_EXPRESSION_ANSWER
    try:
        value = evaluate(expression)
    except CalculatorError as exc:
        return f"I cannot compute {expression}: {exc}."
    exact = format_number(value)
    if value.denominator != 1 and not terminates(value):
        return f"{expression} = {exact} ≈ {approximate(value)}"
    return f"{expression} = {exact}"


class CalculatorAgent:
    """The calculator as an agent: answers the last user message with :func:`answer`.

    Token counts follow the router's pricing rule (:func:`contract.pricing.prompt_tokens`,
    ``ceil(characters / 4)``): the prompt is every message's content joined by newlines, the
    completion is the answer. An answer longer than ``max_tokens`` such tokens is cut to
    ``4 * max_tokens`` characters (``finish_reason`` ``length``).
    """

    name = "calculator"

    def load(self) -> None:
        """Nothing to load."""

    def complete(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        """The answer to the last user message (:func:`answer`), with its token counts."""
        text = answer(last_user_text(messages))
        finish = "stop"
        if prompt_tokens(text) > params.max_tokens:
            text, finish = text[: int(params.max_tokens * CHARS_PER_TOKEN)], "length"
        return Completion(text=text, finish_reason=finish,
                          prompt_tokens=prompt_tokens("\n".join(m.content for m in messages)),
                          completion_tokens=prompt_tokens(text))

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str | Completion]:
        """:meth:`complete`'s text word by word (each word with the spaces after it), then the completion."""
        done = self.complete(messages, params)
        yield from re.findall(r"\s*\S+\s*", done.text) or [done.text]
        yield done
