"""GSM8K: the zero-shot prompt (shared with training data) and robust final-answer scoring.

The prompt templates are re-exported from ``retrofit.prompts`` (shared with the training data).

Scoring reads only the *generated* text (the prompt itself contains ``\\boxed{}``). Candidate rules,
first that yields a number wins:

=========  ===============================================  ===========================
rule       what it matches                                  which number in the span
=========  ===============================================  ===========================
boxed      last balanced ``\\boxed{...}`` holding a number  last
answer_tag last ``<answer>...</answer>``                    last
hashes     last ``#### X``                                  first
answer_is  last "the (final) answer is X"                   first
last_number  (flexible mode only) the whole text           last
=========  ===============================================  ===========================

Numbers are normalised (``$``, ``\\$``, ``\\,``, ``{,}``, ``%``, unicode minus, thousands commas only
between 3-digit groups, trailing period, ``\\frac{a}{b}``/``\\dfrac``/``\\tfrac``, ``a/b``) and
compared exactly as `fractions.Fraction`. An exponent on a unit (``18\\text{ km}^2``, ``5 m^{3}``) is
not a number of the answer; an en or em dash is a minus sign only directly before the digits
("-5", not the punctuation in "the answer is \u2013 5"). A ``\\boxed{}`` without a number (an empty box
after the real one) is skipped for an earlier box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Re-exported: the prompt templates are part of this module's API, shared with the training data.
from retrofit.prompts import (
    GSM8K_PROMPT,
    format_gsm8k_prompt,
    format_gsm8k_target,
    gsm8k_messages,
)


def parse_gold(answer: str) -> Fraction:
    """Gold value: the number after the last ``####``, thousands commas removed."""
    if "####" not in answer:
        raise ValueError("a GSM8K answer must contain '#### <number>'; got: " + answer[-80:])
    text = answer.rsplit("####", 1)[1].strip().replace(",", "")
    try:
        return Fraction(text)
    except ValueError as error:
        raise ValueError(f"GSM8K gold answer {text!r} is not a number") from error


# ----------------------------------------------------------------------------- number parsing
_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]*?)\s*\}\s*\{\s*([^{}]*?)\s*\}")
_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf|mbox)\s*\{([^{}]*)\}")
# "^2" / "^{2}" after a unit (a letter or a \text{...} group): km^2, \text{ cm}^{3}, \mathrm{m}^2
_UNIT_EXPONENT = re.compile(
    r"(\\(?:text|mathrm|textbf|mathbf|mbox)\s*\{[^{}]*\}|[A-Za-z])\s*\^\s*(?:\{[^{}]*\}|\d+(?:\.\d+)?)"
)
_NUMBER = re.compile(
    r"(?<![\w.])-?(?:"
    r"\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]*\d)"  # 1,234,567(.89): commas only between 3-digit groups
    r"|\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"  # 1234, 3.5, 3/4
    r"|\.\d+"  # .5
    r")"
)


def _clean(text: str) -> str:
    """Remove money/percent/LaTeX spacing decorations and unify minus signs."""
    text = text.replace("\u2212", "-")  # the minus sign
    text = text.replace("{,}", ",")
    text = _UNIT_EXPONENT.sub(r"\1", text)  # before \text{} is unwrapped: "18 km^2" is 18
    text = re.sub(r"\\[,!;: ]", "", text)  # LaTeX thin spaces, e.g. 1\,000
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = text.replace("\\left", "").replace("\\right", "")
    text = _TEXT.sub(r" \1 ", text)
    text = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"(\1)/(\2)", text)  # \frac12
    text = _FRAC.sub(r"(\1)/(\2)", text)
    text = re.sub(r"\((-?[\d.]+)\)/\((-?[\d.]+)\)", r"\1/\2", text)
    # En/em dashes are minus signs only right before the digits (after \frac became a/b);
    # otherwise punctuation: "the answer is \u2013 5" is 5.
    text = re.sub(r"[\u2013\u2014](?=\.?\d)", "-", text)
    text = re.sub(r"[\u2013\u2014]", " ", text)
    text = re.sub(r"-\s+(?=\d)", "-", text)  # "- 5" -> "-5"
    return text


def _to_fraction(token: str) -> Fraction | None:
    token = token.replace(",", "")
    try:
        if "/" in token:
            numerator, denominator = token.split("/", 1)
            if float(denominator) == 0:
                return None
            return Fraction(numerator) / Fraction(denominator)
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


def parse_number(text: str, *, which: str = "last") -> Fraction | None:
    """Parse one number out of an answer span ("first" or "last" number in it); None if none.

    >>> parse_number("\\\\$1,234.50.")
    Fraction(2469, 2)
    """
    if which not in ("first", "last"):
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    numbers = [match.group(0) for match in _NUMBER.finditer(_clean(text))]
    if not numbers:
        return None
    return _to_fraction(numbers[0] if which == "first" else numbers[-1])


# ----------------------------------------------------------------------------- candidates
def _boxed_contents(text: str) -> list[str]:
    """Contents of every brace-balanced ``\\boxed{...}`` / ``\\fbox{}``, by position of the opening."""
    contents = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for index in range(start, len(text)):
            if text[index] == "{":
                depth += 1
            elif text[index] == "}":
                depth -= 1
                if depth == 0:
                    contents.append(text[start:index])
                    break
    return contents


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{...}`` (or ``\\fbox{}``); None if none closes."""
    contents = _boxed_contents(text)
    return contents[-1] if contents else None


_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####\s*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:=]?\s*([^\n]*)", re.IGNORECASE)


def _candidates(text: str, flexible: bool) -> list[tuple[str, str, str]]:
    """(rule, span, which) in priority order (every box, last first: the last with a number wins)."""
    found: list[tuple[str, str, str]] = [("boxed", boxed, "last")
                                         for boxed in reversed(_boxed_contents(text))]
    tags = _ANSWER_TAG.findall(text)
    if tags:
        found.append(("answer_tag", tags[-1], "last"))
    hashes = _HASHES.findall(text)
    if hashes:
        found.append(("hashes", hashes[-1], "first"))
    answer_is = _ANSWER_IS.findall(text)
    if answer_is:
        found.append(("answer_is", answer_is[-1], "first"))
    if flexible:
        found.append(("last_number", text, "last"))
    return found


@dataclass(frozen=True)
class Extraction:
    """An extracted final answer: value (None if nothing parsed), the raw span, the rule fired."""

    value: Fraction | None
    span: str | None
    rule: str | None

    @property
    def text(self) -> str | None:
        """Canonical string of the value ("72", "-3", "3/4"), for JSON outputs."""
        return None if self.value is None else str(self.value)


def extract_answer(generated: str, *, mode: str = "strict") -> Extraction:
    """Extract the final answer from generated text only (never pass the prompt).

    mode: "strict" (boxed, answer tag, ####, "the answer is") or "flexible" (also the last number).
    """
    if mode not in ("strict", "flexible"):
        raise ValueError(f"mode must be 'strict' or 'flexible', got {mode!r}")
    for rule, span, which in _candidates(generated, mode == "flexible"):
        value = parse_number(span, which=which)
        if value is not None:
            return Extraction(value, span.strip(), rule)
    return Extraction(None, None, None)


@dataclass(frozen=True)
class GSM8KScore:
    """Strict and flexible verdicts for one sample."""

    strict: Extraction
    flexible: Extraction
    strict_correct: bool
    flexible_correct: bool

    def to_dict(self) -> dict[str, object]:
        """Per-sample fields (answers as canonical strings, e.g. "3/4")."""
        return {
            "strict_answer": self.strict.text,
            "strict_rule": self.strict.rule,
            "strict_correct": self.strict_correct,
            "flexible_answer": self.flexible.text,
            "flexible_rule": self.flexible.rule,
            "flexible_correct": self.flexible_correct,
        }


def score_gsm8k(generated: str, gold: Fraction | str) -> GSM8KScore:
    """Score one generation against a gold value (a Fraction, or a raw ``answer`` field with ####)."""
    gold_value = gold if isinstance(gold, Fraction) else parse_gold(gold) if "####" in gold \
        else Fraction(gold.replace(",", ""))
    strict = extract_answer(generated, mode="strict")
    flexible = extract_answer(generated, mode="flexible")
    return GSM8KScore(strict, flexible, strict.value == gold_value, flexible.value == gold_value)


__all__ = [
    "GSM8K_PROMPT",
    "Extraction",
    "GSM8KScore",
    "extract_answer",
    "format_gsm8k_prompt",
    "format_gsm8k_target",
    "gsm8k_messages",
    "last_boxed",
    "parse_gold",
    "parse_number",
    "score_gsm8k",
]
