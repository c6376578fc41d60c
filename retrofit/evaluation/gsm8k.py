"""GSM8K: the zero-shot prompt (shared with training data) and robust final-answer scoring.

The prompt templates are re-exported from ``retrofit.prompts`` (shared with the training data).

Scoring reads only the *generated* text (the prompt itself contains ``\\boxed{}``). Candidate rules
in order of precedence; the first that yields a number wins:

===========  ==============================================  ========================
rule         what it matches                                 which number in the span
===========  ==============================================  ========================
boxed        every balanced ``\\boxed{...}``, the last first  result
answer_tag   the last ``<answer>...</answer>``               last
hashes       the last ``#### X`` (to the end of the line)     result
answer_is    the last "the (final) answer is / isn't X"      result (to the end of the line)
last_number  (flexible mode only) the whole text             last
===========  ==============================================  ========================

Which number of a span:

1. A *negated* number, right after the word "not", "n't", "rather than" or "instead of", is never
   a candidate ("the answer is not 12, it is 14" is 14; "14 apples, not 12" is 14).
2. *last*: the last non-negated number.
3. *result*: after skipping a leading label (up to three words and ": ", so "\\text{Week 2: } 18"
   is 18), the first *chain* not introduced by a negation. A chain is a number followed by numbers
   joined only by parentheses and ``+ - * / x \u00d7 \u00b7 \u00f7 = \\times \\cdot \\div``; its
   value is its last "="-separated segment that is a single number ("5 + 7 = 12", "3*(4+2)=18" and
   "12 = 5 + 7" are 12, 18, 12), else its first number ("5 + 7" is 5). Text after the chain does
   not count: "\\boxed{18 \\text{ (2 more than 16)}}" is 18, "the answer is 12 since x = 20 - 8"
   is 12.

Number grammar (after normalising ``$``, ``\\$``, ``\\,``, ``{,}``, ``%``, unicode minus, trailing
period), tried in this order at each position:

1. mixed number: a whole number, one space, a proper fraction ("2 1/2" is 5/2; "3 5/4" is two
   numbers). In LaTeX a whole number directly before ``\\frac`` / ``\\dfrac`` / ``\\tfrac`` is a
   mixed number too ("2\\frac{1}{2}", "2 \\frac{1}{2}", "-1\\frac12" is -3/2).
2. thousands separated by commas: groups of exactly three digits after a first group of 1-3 digits.
3. thousands separated by one space, thin space (U+2009), narrow no-break space (U+202F) or no-break
   space (U+00A0), the same one throughout: groups of exactly three digits after a first group of
   1-3 digits ("12 345 678"; "3 4-hour shifts" is 3 and 4; a newline never separates thousands).
   "3 400-page books" therefore reads as 3400: the price of reading "1 000" right.
4. a plain integer, decimal or ``a/b`` fraction (``\\frac{a}{b}`` becomes ``a/b``).

Values compare exactly as `fractions.Fraction`. An exponent on a unit (``18\\text{ km}^2``,
``5 m^{3}``) is not a number of the answer; an en or em dash is a minus sign only directly before
the digits ("-5", not the punctuation in "the answer is \u2013 5"). A ``\\boxed{}`` without a number
(an empty box after the real one) is skipped for an earlier box.
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
# One space, no-break, thin or narrow no-break space (never a newline): a thousands separator.
_SPACE = "[ \u00a0\u2009\u202f]"
_NUMBER = re.compile(
    r"(?<![\w.])-?(?:"
    rf"(?P<whole>\d+){_SPACE}(?P<numerator>[1-9]\d*)/(?P<denominator>\d+)(?!\.?\d|/)"  # 2 1/2
    r"|\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d,]*\d)"  # 1,234,567(.89): commas between 3-digit groups
    rf"|\d{{1,3}}(?P<space>{_SPACE})\d{{3}}(?:(?P=space)\d{{3}})*(?:\.\d+)?(?!\d)"  # 12 345 678
    r"|\d+(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"  # 1234, 3.5, 3/4
    r"|\.\d+"  # .5
    r")"
)
_NEGATION = re.compile(r"(?:\bnot|n['\u2019]t|\brather\s+than|\binstead\s+of)\s*$", re.IGNORECASE)
# What may join two numbers of one chain of arithmetic ("5 + 7 = 12", "3 \times 4", "20 -8",
# "3*(16.50+22.50)=117").
_JOIN = re.compile(r"[\s()]*(?:[-+*/=x\u00d7\u00b7\u00f7]|\\times|\\cdot|\\div)?[\s()]*")
# A span's leading label of at most three words: "Total: 18", "Week 2: 18", "Total cost: 18".
_LABEL = re.compile(r"\s*[A-Za-z]+(?:[ \t]+\w+){0,2}[ \t]*:\s")


def _clean(text: str) -> str:
    """Remove money/percent/LaTeX spacing decorations and unify minus signs."""
    text = text.replace("\u2212", "-")  # the minus sign
    text = text.replace("{,}", ",")
    text = _UNIT_EXPONENT.sub(r"\1", text)  # before \text{} is unwrapped: "18 km^2" is 18
    text = re.sub(r"\\[,!;: ]", "", text)  # LaTeX thin spaces, e.g. 1\,000
    text = text.replace("\\$", "").replace("$", "").replace("\\%", "").replace("%", "")
    text = text.replace("\\left", "").replace("\\right", "")
    text = _TEXT.sub(r" \1 ", text)
    text = re.sub(r"(\d)\s*(?=\\[dt]?frac)", r"\1 ", text)  # mixed number: 2\frac{1}{2} -> 2 1/2
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
    """Value of one `_NUMBER` token ("1,234", "12 345", "2 1/2", "3/4"); None for a zero divisor."""
    mixed = re.fullmatch(rf"(-?)(\d+){_SPACE}(\d+)/(\d+)", token)
    if mixed:
        sign, whole, numerator, denominator = mixed.groups()
        value = int(whole) + Fraction(int(numerator), int(denominator))
        return -value if sign else value
    token = re.sub(rf",|{_SPACE}", "", token)
    try:
        if "/" in token:
            numerator, denominator = token.split("/", 1)
            if float(denominator) == 0:
                return None
            return Fraction(numerator) / Fraction(denominator)
        return Fraction(token)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True)
class _Number:
    """One number of a cleaned span: its value, where it is, and whether a negation precedes it."""

    value: Fraction
    start: int
    end: int
    negated: bool


def _numbers(text: str) -> list[_Number]:
    """Every number of an already cleaned text, in order (an improper "3 5/4" is two numbers)."""
    spans = []
    for match in _NUMBER.finditer(text):
        denominator = match.group("denominator")
        if denominator and int(match.group("numerator")) >= int(denominator):
            spans += [(match.start(), match.end("whole")), (match.start("numerator"), match.end())]
        else:
            spans.append(match.span())
    numbers = []
    for start, end in spans:
        value = _to_fraction(text[start:end])
        if value is not None:
            negated = _NEGATION.search(text, max(0, start - 24), start) is not None
            numbers.append(_Number(value, start, end, negated))
    return numbers


def _chain(text: str, numbers: list[_Number], index: int) -> list[list[_Number]]:
    """The chain of arithmetic that starts at ``numbers[index]``, split into its "=" segments."""
    segments = [[numbers[index]]]
    for previous, following in zip(numbers[index:], numbers[index + 1:]):
        gap = text[previous.end:following.start]
        if not _JOIN.fullmatch(gap) or (not gap.strip() and text[following.start] != "-"):
            break  # "3 4-hour": a bare space joins only a signed number ("20 -8")
        if "=" in gap:
            segments.append([])
        segments[-1].append(following)
    return segments


def _first_result(text: str, numbers: list[_Number]) -> Fraction | None:
    """Value of the first chain not introduced by a negation: its last single-number "=" segment."""
    index = 0
    while index < len(numbers):
        segments = _chain(text, numbers, index)
        if not numbers[index].negated:
            singles = [segment[0].value for segment in segments if len(segment) == 1]
            return singles[-1] if singles else numbers[index].value
        index += sum(len(segment) for segment in segments)  # skip the negated chain as a whole
    return None


def parse_number(text: str, *, which: str = "last") -> Fraction | None:
    """Parse one number out of an answer span; None if none (rules: module docstring).

    which: "first" or "last" non-negated number, or "result" (the first chain's result, after a
    leading "Label:").

    >>> parse_number("\\\\$1,234.50.")
    Fraction(2469, 2)
    >>> parse_number("5 + 7 = 12 apples, not 13", which="result")
    Fraction(12, 1)
    """
    if which not in ("first", "last", "result"):
        raise ValueError(f"which must be 'first', 'last' or 'result', got {which!r}")
    text = _clean(text)
    if which == "result":
        label = _LABEL.match(text)
        text = text[label.end():] if label else text
        return _first_result(text, _numbers(text))
    values = [number.value for number in _numbers(text) if not number.negated]
    if not values:
        return None
    return values[0] if which == "first" else values[-1]


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
# "is" then "n't" stays in the span, so "the answer isn't 12, it's 14" reads 14.
_ANSWER_IS = re.compile(
    r"(?:the\s+)?(?:final\s+)?answer\s+is(?=n['\u2019]t|[^A-Za-z]|$)\s*[:=]?\s*([^\n]*)",
    re.IGNORECASE,
)


def _candidates(text: str, flexible: bool) -> list[tuple[str, str, str]]:
    """(rule, span, which) in priority order (every box, last first: the last with a number wins)."""
    found: list[tuple[str, str, str]] = [("boxed", boxed, "result")
                                         for boxed in reversed(_boxed_contents(text))]
    tags = _ANSWER_TAG.findall(text)
    if tags:
        found.append(("answer_tag", tags[-1], "last"))
    hashes = _HASHES.findall(text)
    if hashes:
        found.append(("hashes", hashes[-1], "result"))
    answer_is = _ANSWER_IS.findall(text)
    if answer_is:
        found.append(("answer_is", answer_is[-1], "result"))
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
