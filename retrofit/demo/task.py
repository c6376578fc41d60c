"""The demo's task: strings of the letters a-d in alphabetical order, with a known length law.

A string is a sorted multiset of letters (``aaabbbbcdd``): its content is easy for a tiny model to
learn (a letter is bounded by its neighbours) and stays valid wherever a FlexMDM inserts a token,
so the comparison is decided by length, not by content left unlearned. Its length follows the
multi-modal law :data:`LENGTH_DISTRIBUTION`. Infilling removes a middle of 1-16 letters from a
string of 16 or 32 letters; the model is not told how many: a completion is right when the whole
string is sorted and has a length the data has (:func:`infill_ok`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "ALPHABET",
    "CANVAS_LENGTH",
    "CHAT_TEMPLATE",
    "INFILL_MARKERS",
    "LENGTH_DISTRIBUTION",
    "MAX_MIDDLE",
    "PSM_TEMPLATE",
    "InfillTask",
    "bayes_expected_missing",
    "build_tokenizer",
    "infill_ok",
    "is_valid",
    "length_w1",
    "length_w1_interval",
    "make_infill_tasks",
    "sample_strings",
]

ALPHABET = "abcd"
# The data's length law (string length in letters -> probability).
LENGTH_DISTRIBUTION: dict[int, float] = {4: 0.1, 16: 0.4, 32: 0.4, 64: 0.1}
# The longest string: the MDM baseline's canvas for a plain sample.
CANVAS_LENGTH = 64
# Infilling: held-out strings of these lengths lose a middle of 1..MAX_MIDDLE letters.
INFILL_STRING_LENGTHS = (16, 32)
MAX_MIDDLE = 16
# Layout: every row starts with BOS (LLaDA has no absolute position embedding: a canvas of masks
# needs a fixed first token); the chat template renders the prompt text after it. The FlexMDM grows
# the middle between the two markers (``BOS prefix <|mid|> middle <|suf|> suffix``); the MDM
# baseline reads the PSM prompt ``BOS prefix <|suf|> suffix <|mid|>`` and writes the middle then
# EOS. A plain sample is the infilling task with an empty prefix and suffix.
INFILL_MARKERS = ("<|mid|>", "<|suf|>")
PSM_TEMPLATE = "{instruction}{prefix}<|suf|>{suffix}<|mid|>"
CHAT_TEMPLATE = "{{ bos_token }}{% for message in messages %}{{ message['content'] }}{% endfor %}"


def sample_strings(
    count: int, rng: random.Random, lengths: Mapping[int, float] = LENGTH_DISTRIBUTION
) -> list[str]:
    """``count`` sorted strings: a length from ``lengths``, then that many letters drawn uniformly
    from :data:`ALPHABET` and sorted."""
    for length in lengths:
        if length <= 0:
            raise ValueError(f"string lengths must be positive, got {length}")
    choices, weights = list(lengths), list(lengths.values())
    return [
        "".join(sorted(rng.choice(ALPHABET) for _ in range(rng.choices(choices, weights)[0])))
        for _ in range(count)
    ]


def is_valid(text: str) -> bool:
    """True for a non-empty string of letters of :data:`ALPHABET` in alphabetical order."""
    return bool(text) and all(c in ALPHABET for c in text) and list(text) == sorted(text)


def infill_ok(prefix: str, middle: str, suffix: str) -> bool:
    """A completion is right when it fills something (a middle was removed) and the whole string is
    valid and has a length the data has (a string the data could contain)."""
    whole = prefix + middle + suffix
    return bool(middle) and is_valid(whole) and len(whole) in LENGTH_DISTRIBUTION


@dataclass(frozen=True)
class InfillTask:
    """One infilling problem: the model must refill ``middle``'s place without being told its
    length."""

    prefix: str
    middle: str
    suffix: str


def make_infill_tasks(strings: Sequence[str], count: int, rng: random.Random) -> list[InfillTask]:
    """``count`` tasks from the strings of length 16 or 32: a middle of ``m ~ U{1..16}`` letters
    at a uniform position is removed (prefix and suffix may be empty)."""
    pool = [text for text in strings if len(text) in INFILL_STRING_LENGTHS]
    if not pool:
        raise ValueError(f"no strings of lengths {INFILL_STRING_LENGTHS} to make infilling tasks")
    tasks = []
    for _ in range(count):
        text = rng.choice(pool)
        middle_length = rng.randint(1, min(MAX_MIDDLE, len(text)))
        start = rng.randint(0, len(text) - middle_length)
        end = start + middle_length
        tasks.append(InfillTask(text[:start], text[start:end], text[end:]))
    return tasks


def build_tokenizer():
    """The demo's ``transformers.PreTrainedTokenizerFast``: ``a b c d`` = 0..3, then the mask
    ``<|mdm_mask|>``, ``<|eos|>`` (= pad, as in LLaDA), ``<|bos|>`` and the two infilling markers;
    its chat template renders BOS followed by the prompt text."""
    from retrofit.tokenization import build_char_tokenizer

    return build_char_tokenizer(
        ALPHABET,
        pad_token="<|eos|>",
        eos_token="<|eos|>",
        bos_token="<|bos|>",
        extra_special_tokens=INFILL_MARKERS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=256,
    )


def length_w1(lengths: Sequence[int], distribution: Mapping[int, float] = LENGTH_DISTRIBUTION) -> float:
    """Wasserstein-1 distance between the empirical law of ``lengths`` and ``distribution``
    (exact: the integral of the absolute difference of the two CDFs)."""
    if not lengths:
        return float("nan")
    top = max(max(lengths), max(distribution))
    counts: dict[int, int] = {}
    for length in lengths:
        counts[length] = counts.get(length, 0) + 1
    total = generated = expected = 0.0
    for value in range(top + 1):
        generated += counts.get(value, 0) / len(lengths)
        expected += distribution.get(value, 0.0)
        total += abs(generated - expected)
    return total


def length_w1_interval(lengths: Sequence[int], seed: int = 0, resamples: int = 400,
                       distribution: Mapping[int, float] = LENGTH_DISTRIBUTION) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of :func:`length_w1` (resampling the generated lengths)."""
    rng = random.Random(seed)
    values = sorted(
        length_w1([lengths[rng.randrange(len(lengths))] for _ in lengths], distribution)
        for _ in range(resamples)
    )
    return values[int(0.025 * (resamples - 1))], values[int(0.975 * (resamples - 1))]


def bayes_expected_missing(
    present: int, alpha: float, lengths: Mapping[int, float] = LENGTH_DISTRIBUTION
) -> float:
    """Bayes-optimal number of tokens still to insert given only the current length,
    ``E[L - l | l, t] = sum_L (L - l) p(L) Bin(l; L, alpha(t)) / sum_L p(L) Bin(l; L, alpha(t))``:
    each of the L tokens is present at time t independently with probability alpha(t)."""
    weights = {}
    for length, probability in lengths.items():
        if present > length:
            continue
        weights[length] = (
            probability * math.comb(length, present) * alpha**present * (1 - alpha) ** (length - present)
        )
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    return sum((length - present) * weight for length, weight in weights.items()) / total
