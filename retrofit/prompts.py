"""Prompt templates shared by the training data and the benchmarks (standard library only).

The data pipeline (``retrofit.data``) and the evaluation layer (``retrofit.evaluation``) both build
GSM8K prompts and targets from here, so training and evaluation can never drift apart.
"""

from __future__ import annotations

import re

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
