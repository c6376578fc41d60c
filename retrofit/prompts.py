"""Prompt templates shared by the training data and the benchmarks (standard library only).

The data pipeline (``retrofit.data``) and the evaluation layer (``retrofit.evaluation``) both build
GSM8K prompts and targets from here, so training and evaluation can never drift apart. Two GSM8K
templates exist (:data:`GSM8K_TEMPLATES`), chosen by name in a recipe (``data.gsm8k_template``)
and a benchmark spec (``prompt.template``), which the prompt-layout invariant tests pair:

- ``gsm8k_zero_shot`` (default): "{question}\nPlease reason step by step, and put your final
  answer within \\boxed{}." -> rationale + "The final answer is \\boxed{N}.".
- ``gsm8k_research``: the research code's (github.com/brianlck/FlexMDM, preprocess_math.py): a
  system instruction asking for ``<reasoning>`` / ``<answer>`` sections in the user message, the
  answer prefilled with ``<reasoning>`` (protected, part of the prompt), target = rationale +
  "</reasoning>\n<answer>\\boxed{N}</answer>".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

GSM8K_PROMPT = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
"""User message for zero-shot GSM8K (apply the model's chat template on top)."""


def format_gsm8k_prompt(question: str) -> str:
    """The user-message text for one GSM8K question (no chat template applied)."""
    return GSM8K_PROMPT.format(question=question.strip())


def gsm8k_messages(question: str) -> list[dict[str, str]]:
    """Chat messages for one question: `tokenizer.apply_chat_template(messages, ...)` input."""
    return [{"role": "user", "content": format_gsm8k_prompt(question)}]


_CALCULATOR = re.compile(r"<<[^>]*>>")


def format_gsm8k_target(answer: str) -> str:
    """Training target from a GSM8K `answer` field: the rationale without calculator annotations
    (``<<16-3-4=9>>``), ending in the same ``\\boxed{}`` the prompt asks for.

    "Natalia sold 48/2 = <<48/2=24>>24 clips...\\n#### 72" ->
    "Natalia sold 48/2 = 24 clips...\\nThe final answer is \\boxed{72}."
    """
    if "####" not in answer:
        raise ValueError("a GSM8K answer must end with '#### <number>'; got: " + answer[-80:])
    rationale, final = answer.rsplit("####", 1)
    rationale = _CALCULATOR.sub("", rationale).strip()
    final = final.strip().replace(",", "")
    return f"{rationale}\nThe final answer is \\boxed{{{final}}}."


RESEARCH_GSM8K_SYSTEM = (
    "You are a math expert. You will be given a question to solve. Solve it step by step. Wrap the "
    "final answer in a \\boxed{}. \nRespond in the following format:\n<reasoning>\nYour reasoning "
    "here\n</reasoning>\n<answer>\n\\boxed{...}\n</answer>"
)


def format_gsm8k_research_prompt(question: str) -> str:
    """The research code's GSM8K user message: its system instruction, a blank line, the question."""
    return RESEARCH_GSM8K_SYSTEM + "\n\n" + question.strip()


def format_gsm8k_research_target(answer: str) -> str:
    """The research code's target after the ``<reasoning>`` prefill: the rationale (calculator
    annotations removed, as in :func:`format_gsm8k_target`) + ``</reasoning>`` and the boxed answer."""
    if "####" not in answer:
        raise ValueError("a GSM8K answer must end with '#### <number>'; got: " + answer[-80:])
    rationale, final = answer.rsplit("####", 1)
    rationale = _CALCULATOR.sub("", rationale).strip()
    return f"{rationale}</reasoning>\n<answer>\\boxed{{{final.strip().replace(',', '')}}}</answer>"


@dataclass(frozen=True)
class GSM8KTemplate:
    """How a GSM8K record becomes a prompt and a target: the user message, the text that opens the
    answer as part of the (protected) prompt, and the training target that follows it."""

    prompt: Callable[[str], str]
    target: Callable[[str], str]
    answer_prefix: str = ""


GSM8K_TEMPLATES: dict[str, GSM8KTemplate] = {
    "gsm8k_zero_shot": GSM8KTemplate(format_gsm8k_prompt, format_gsm8k_target),
    "gsm8k_research": GSM8KTemplate(format_gsm8k_research_prompt, format_gsm8k_research_target,
                                    answer_prefix="<reasoning>"),
}


def gsm8k_template(name: str) -> GSM8KTemplate:
    """The GSM8K template called ``name`` (a one-line error listing the names otherwise)."""
    if name not in GSM8K_TEMPLATES:
        raise ValueError(f"unknown GSM8K template {name!r}; choose one of {sorted(GSM8K_TEMPLATES)}")
    return GSM8K_TEMPLATES[name]
