"""GSM8K answer extraction and scoring: gold rationales score 100%, tricky strings parse right."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest

from retrofit.evaluation.gsm8k import (
    GSM8K_PROMPT,
    extract_answer,
    format_gsm8k_prompt,
    format_gsm8k_target,
    gsm8k_messages,
    last_boxed,
    parse_gold,
    parse_number,
    score_gsm8k,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
GSM8K_TEST = SHARED / "data" / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def test_rows() -> list[dict]:
    with GSM8K_TEST.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_gold_answers_parse(test_rows):
    golds = [parse_gold(row["answer"]) for row in test_rows]
    assert len(golds) == 1319
    assert all(g.denominator == 1 for g in golds)  # all integers
    assert golds[489] == -10 and golds[1113] == -3
    assert sum(g < 0 for g in golds) == 2
    with_commas = [row for row in test_rows if "," in row["answer"].rsplit("####", 1)[1]]
    assert len(with_commas) == 14
    assert all(parse_gold(row["answer"]) >= 1000 for row in with_commas)


def test_gold_rationales_score_100_percent(test_rows):
    strict_boxed = flexible_hashes = strict_hashes = 0
    for row in test_rows:
        gold = parse_gold(row["answer"])
        boxed = score_gsm8k(format_gsm8k_target(row["answer"]), gold)
        assert boxed.strict.rule == "boxed", row["answer"][-60:]
        strict_boxed += boxed.strict_correct
        raw = score_gsm8k(row["answer"], gold)
        flexible_hashes += raw.flexible_correct
        strict_hashes += raw.strict_correct
    assert strict_boxed == len(test_rows)
    assert flexible_hashes == len(test_rows)
    assert strict_hashes == len(test_rows)  # "#### X" is a strict rule too


def test_prompt_template_is_shared_and_asks_for_boxed():
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    text = format_gsm8k_prompt(question)
    assert text == GSM8K_PROMPT.format(question=question)
    assert question in text and "\\boxed{}" in text and "step by step" in text
    assert gsm8k_messages(question) == [{"role": "user", "content": text}]
    # The prompt's own empty \boxed{} never yields an answer: scoring sees generated text only.
    assert extract_answer(text).value is None


def test_target_format_drops_calculator_annotations():
    answer = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072"
    target = format_gsm8k_target(answer)
    assert "<<" not in target and ">>" not in target
    assert target.endswith("\\boxed{1072}.")
    with pytest.raises(ValueError, match="####"):
        format_gsm8k_target("no final answer line")


# (generated text, strict value, strict rule, flexible value)
PITFALLS = [
    ("so \\boxed{1,234}", Fraction(1234), "boxed", Fraction(1234)),
    ("\\boxed{\\$18.00}", Fraction(18), "boxed", Fraction(18)),
    ("$\\boxed{-3}$", Fraction(-3), "boxed", Fraction(-3)),
    ("\\boxed{\u22123}", Fraction(-3), "boxed", Fraction(-3)),  # unicode minus
    ("\\boxed{\\frac{3}{4}}", Fraction(3, 4), "boxed", Fraction(3, 4)),
    ("\\boxed{-\\dfrac{1}{2}}", Fraction(-1, 2), "boxed", Fraction(-1, 2)),
    ("\\boxed{\\frac12}", Fraction(1, 2), "boxed", Fraction(1, 2)),
    ("\\boxed{25\\%}", Fraction(25), "boxed", Fraction(25)),
    ("\\boxed{2\\,000}", Fraction(2000), "boxed", Fraction(2000)),
    ("\\boxed{1{,}000}", Fraction(1000), "boxed", Fraction(1000)),
    ("\\boxed{\\text{18}}", Fraction(18), "boxed", Fraction(18)),
    ("\\boxed{10 \\text{ dollars}}", Fraction(10), "boxed", Fraction(10)),
    ("\\boxed{x = 5}", Fraction(5), "boxed", Fraction(5)),
    ("\\boxed{\\frac{\\text{3}}{4}}", Fraction(3, 4), "boxed", Fraction(3, 4)),
    ("first \\boxed{5}, then on reflection \\boxed{6}", Fraction(6), "boxed", Fraction(6)),
    ("\\boxed{{12}}", Fraction(12), "boxed", Fraction(12)),  # nested braces
    ("\\boxed{12", None, None, Fraction(12)),  # unbalanced: not a boxed answer
    ("\\boxed{} and later 7", None, None, Fraction(7)),  # empty box: falls through
    ("\\boxed{18} so that is \\boxed{}", Fraction(18), "boxed", Fraction(18)),  # last box with a number
    ("\\boxed{18\\text{ km}^2}", Fraction(18), "boxed", Fraction(18)),  # exponent of a unit
    ("\\boxed{18 \\mathrm{m}^{2}}", Fraction(18), "boxed", Fraction(18)),
    ("\\boxed{5 km^2}", Fraction(5), "boxed", Fraction(5)),
    ("\\boxed{\u20133}", Fraction(-3), "boxed", Fraction(-3)),  # en dash right before the digits
    ("\\boxed{\u2013\\frac{1}{2}}", Fraction(-1, 2), "boxed", Fraction(-1, 2)),
    ("<answer> 12 </answer>", Fraction(12), "answer_tag", Fraction(12)),
    ("<answer>The total is $1,500.</answer>", Fraction(1500), "answer_tag", Fraction(1500)),
    ("work...\n#### 1,000,000", Fraction(1000000), "hashes", Fraction(1000000)),
    ("#### -10", Fraction(-10), "hashes", Fraction(-10)),
    ("The answer is 42.", Fraction(42), "answer_is", Fraction(42)),
    ("So the final answer is: $3.50.", Fraction(7, 2), "answer_is", Fraction(7, 2)),
    ("The answer is \u2013 5", Fraction(5), "answer_is", Fraction(5)),  # an en dash as punctuation
    ("The answer is \u2014 12 apples", Fraction(12), "answer_is", Fraction(12)),  # an em dash too
    ("the answer is 12 apples, 3 left", Fraction(12), "answer_is", Fraction(12)),  # strict rules first
    ("1,2,3", None, None, Fraction(3)),  # a list, not a thousands number
    ("12,34", None, None, Fraction(34)),  # comma not between 3-digit groups
    ("x = 10 - 5 = 5", None, None, Fraction(5)),
    ("It costs $1,234.50.", None, None, Fraction(2469, 2)),
    ("3.50 and then 3.5", None, None, Fraction(7, 2)),
    ("no numbers at all", None, None, None),
    ("", None, None, None),
]


@pytest.mark.parametrize("text, strict_value, strict_rule, flexible_value", PITFALLS)
def test_pitfall_table(text, strict_value, strict_rule, flexible_value):
    strict = extract_answer(text, mode="strict")
    assert strict.value == strict_value
    assert strict.rule == strict_rule
    flexible = extract_answer(text, mode="flexible")
    assert flexible.value == flexible_value
    if strict_value is None and flexible_value is not None:
        assert flexible.rule == "last_number"


def test_rule_priority_and_exact_comparison():
    text = "The answer is 3. #### 4 <answer>5</answer> \\boxed{6} 7"
    assert extract_answer(text).rule == "boxed"
    score = score_gsm8k(text, Fraction(6))
    assert score.strict_correct and not score_gsm8k(text, Fraction(7)).strict_correct
    assert score_gsm8k("\\boxed{0.75}", Fraction(3, 4)).strict_correct  # exact fraction compare
    assert not score_gsm8k("\\boxed{0.7500001}", Fraction(3, 4)).strict_correct
    assert score_gsm8k("\\boxed{72}", "Some rationale\n#### 72").strict_correct
    assert score_gsm8k("\\boxed{2,125}", "2,125").strict_correct
    record = score.to_dict()
    assert record["strict_answer"] == "6" and record["strict_rule"] == "boxed"


def test_boxed_and_number_helpers():
    assert last_boxed("a \\boxed{1} b \\boxed{\\frac{2}{3}} c") == "\\frac{2}{3}"
    assert last_boxed("\\fbox{9}") == "9"
    assert last_boxed("none") is None
    assert parse_number("from 3 to 4", which="first") == 3
    assert parse_number("from 3 to 4", which="last") == 4
    assert parse_number("1/0") is None
    with pytest.raises(ValueError, match="which"):
        parse_number("1", which="middle")
    with pytest.raises(ValueError, match="mode"):
        extract_answer("1", mode="lenient")
