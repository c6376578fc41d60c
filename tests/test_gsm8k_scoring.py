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


def test_training_targets_extract_gold_in_both_modes(test_rows):
    """Every gold answer rendered through the training target formatter reads back as its gold."""
    for row in test_rows:
        gold = parse_gold(row["answer"])
        target = format_gsm8k_target(row["answer"])
        for mode in ("strict", "flexible"):
            extraction = extract_answer(target, mode=mode)
            assert (extraction.value, extraction.rule) == (gold, "boxed"), (mode, target[-80:])


def test_rationale_with_space_thousands_reads_its_result(test_rows):
    """Test row 266 writes "$400 000 - $282 000 = $118 000": its last number is 118000, not 0."""
    row = test_rows[266]
    rationale = row["answer"].rsplit("####", 1)[0]
    assert "$118 000" in rationale
    assert extract_answer(rationale, mode="flexible").value == parse_gold(row["answer"]) == 118000


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
    assert parse_number("17 000/5 = 3 400", which="first") == 17000  # not the mixed 17 + 0/5
    assert parse_number("5 + 7 = 12 apples, not 13", which="result") == 12
    assert parse_number("cannot 5") == 5 and parse_number("can not 5") is None  # whole words only
    with pytest.raises(ValueError, match="which"):
        parse_number("1", which="middle")
    with pytest.raises(ValueError, match="mode"):
        extract_answer("1", mode="lenient")


# Issue 12 item 5: well-formed answers that extraction used to misread, by class.
# (generated text, strict value, strict rule, flexible value); every row failed before the fix.
F = Fraction
SPACE_THOUSANDS = [  # a space (or thin / narrow no-break / no-break space) between 3-digit groups
    ("\\boxed{1 000}", F(1000), "boxed", F(1000)),
    ("The total is 12 345 678 dollars.\n#### 12 345 678", F(12345678), "hashes", F(12345678)),
    ("The answer is 1\u2009000 apples.", F(1000), "answer_is", F(1000)),  # thin space
    ("So she saves $\\boxed{\\$2\u202f500}$.", F(2500), "boxed", F(2500)),  # narrow no-break space
    ("\\boxed{10\u00a0000}", F(10000), "boxed", F(10000)),  # no-break space
    ("The farm grows 3 250 kg of wheat.", None, None, F(3250)),
    ("So she earns $45 000.50 a year.", None, None, F(90001, 2)),
    ("The answer is 17 000/5 = 3 400 people.", F(3400), "answer_is", F(3400)),  # train row 5066
]
MIXED_NUMBERS = [  # a whole number then a proper fraction, in LaTeX or plain text
    ("\\boxed{2\\frac{1}{2}}", F(5, 2), "boxed", F(5, 2)),
    ("\\boxed{2 \\frac{1}{2}}", F(5, 2), "boxed", F(5, 2)),
    ("So she needs $\\boxed{3\\tfrac{3}{4}}$ cups of flour.", F(15, 4), "boxed", F(15, 4)),
    ("\\boxed{-1\\frac12}", F(-3, 2), "boxed", F(-3, 2)),
    ("The answer is 2\\,\\dfrac{1}{3} pies.", F(7, 3), "answer_is", F(7, 3)),
    ("The answer is 2 1/2 hours.", F(5, 2), "answer_is", F(5, 2)),
    ("So the answer is 2 1/2.", F(5, 2), "answer_is", F(5, 2)),  # before a full stop
    ("Each board is 4 3/4 feet long.\n#### 4 3/4", F(19, 4), "hashes", F(19, 4)),
    ("She walked 1 1/4 miles and then 2 1/2 miles.", None, None, F(5, 2)),
]
BOXED_WITH_EXPLANATION = [  # the number that opens the box, not the numbers explaining it
    ("\\boxed{18 \\text{ dollars, since } 3 \\times 6 = 18 \\text{, plus 2 more}}", F(18), "boxed",
     F(18)),
    ("\\boxed{18 \\text{ (2 more than 16)}}", F(18), "boxed", F(18)),
    ("Total: \\boxed{18 (she had 20 and gave away 2)} apples", F(18), "boxed", F(18)),
    ("The final answer is \\boxed{42 \\text{ cookies, i.e. } 6 \\text{ boxes of } 7}.", F(42),
     "boxed", F(42)),
    ("\\boxed{\\text{Total: } 18 \\text{ (2 more than 16)}}", F(18), "boxed", F(18)),
    ("\\boxed{12 = 5 + 7} apples", F(12), "boxed", F(12)),
]
ANSWER_IS_ARITHMETIC = [  # "the answer is" + arithmetic: the result after the last "="
    ("The answer is 5 + 7 = 12.", F(12), "answer_is", F(12)),
    ("So the answer is 3*4=12 apples.", F(12), "answer_is", F(12)),
    ("The final answer is $20 - $8 = $12.", F(12), "answer_is", F(12)),
    ("The answer is 3 \\times 4 = 12", F(12), "answer_is", F(12)),
    ("The answer is: 48 / 2 = 24 clips.", F(24), "answer_is", F(24)),
    ("The answer is 1 000 + 250 = 1 250 dollars.", F(1250), "answer_is", F(1250)),
    ("The answer is 2 x 3 = 6 and 6 + 6 = 12 eggs.", F(6), "answer_is", F(6)),  # first chain only
    ("So the answer is 3*(16.50+22.50+42)=243.", F(243), "answer_is", F(243)),  # test row 26
    ("The answer is (100/120)*48 = 40 pages.", F(40), "answer_is", F(40)),  # test row 958
    ("#### 5 + 7 = 12", F(12), "hashes", F(12)),
]
NEGATED_CANDIDATE = [  # a number right after "not", "n't", "rather than", "instead of" is no answer
    ("The answer is not 12, it is 14.", F(14), "answer_is", F(14)),
    ("So the answer is not 5 but 7.", F(7), "answer_is", F(7)),
    ("The answer isn't 12, it's 14.", F(14), "answer_is", F(14)),
    ("The answer is not 12. It is 14 apples.", F(14), "answer_is", F(14)),
    ("The final answer is not $1,200 but $1,500.", F(1500), "answer_is", F(1500)),
    ("The answer is not 5 + 7 = 12, it is 5 + 9 = 14.", F(14), "answer_is", F(14)),
    ("The answer is not 12.", None, None, None),  # only a negated number: no answer
    ("She has 14 apples, not 12.", None, None, F(14)),
    ("So the total is 7 rather than 5.", None, None, F(7)),
    ("It takes 9 hours instead of 6.", None, None, F(9)),
]
# Boundaries of the new rules: these already read right and must keep doing so.
GUARDS = [
    ("The answer is 3 4-hour shifts.", F(3), "answer_is", F(3)),  # "3 4": not a 3-digit group
    ("She works 3 4-hour shifts, so 3 x 4 = 12 hours.", None, None, F(12)),
    ("Scores: 12 3456", None, None, F(3456)),  # a 4-digit group is a separate number
    ("rows of 5 10 15", None, None, F(15)),
    ("The answer is 1\n000", F(1), "answer_is", F(1)),  # a newline never separates thousands
    ("The answer is 3 5/4 cups", F(3), "answer_is", F(3)),  # improper: not a mixed number
    ("\\boxed{18} dollars, since 3 x 6 = 18 ... 2 more", F(18), "boxed", F(18)),
    ("\\boxed{18}$ dollars. Explanation: 3 \\cdot 6 = 18, plus $2 tip", F(18), "boxed", F(18)),
    ("\\boxed{\\text{Week 2: } 18}", F(18), "boxed", F(18)),  # a label inside the box
    ("The answer is that she has 12 apples: 5 red and 7 green.", F(12), "answer_is", F(12)),
    ("The answer is 12 because 20 - 8 = 12.", F(12), "answer_is", F(12)),
    ("The answer is 12 since x = 20 - 8.", F(12), "answer_is", F(12)),
    ("The answer is 14. Check: 2 x 7 = 14 = 7 + 7", F(14), "answer_is", F(14)),
    ("The answer is 5 + 7", F(5), "answer_is", F(5)),  # unevaluated arithmetic: its first number
    ("The answer is 14, not 12.", F(14), "answer_is", F(14)),
    ("The answer is12", F(12), "answer_is", F(12)),
]


ISSUE12_CLASSES = {
    "space_thousands": SPACE_THOUSANDS,
    "mixed_number": MIXED_NUMBERS,
    "boxed_with_explanation": BOXED_WITH_EXPLANATION,
    "answer_is_arithmetic": ANSWER_IS_ARITHMETIC,
    "negated_candidate": NEGATED_CANDIDATE,
    "guard": GUARDS,
}


@pytest.mark.parametrize(
    "text, strict_value, strict_rule, flexible_value",
    [pytest.param(*case, id=f"{name}-{index}")
     for name, cases in ISSUE12_CLASSES.items() for index, case in enumerate(cases)],
)
def test_issue12_extraction_classes(text, strict_value, strict_rule, flexible_value):
    test_pitfall_table(text, strict_value, strict_rule, flexible_value)
