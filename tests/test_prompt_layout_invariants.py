"""Train/eval invariant: what a benchmark prompts the model with is token-for-token what it was
trained on (issue 12).

For every training recipe and every benchmark spec that the README pairs with it, one task is
encoded through the evaluation path (the spec's benchmark -> ``request_for`` -> the inference
pipeline of a checkpoint that records the recipe's prompt layout) and training rows through the
training path (the recipe's data config -> the real example stream). The protected parts (BOS,
chat wrapper, markers, prefix, suffix, EOS) must be identical. For infilling without an
instruction (HumanEval), a share of training rows must carry exactly the evaluation layout.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import pytest

from retrofit.config import load_config
from retrofit.data import ExampleStream
from retrofit.data.examples import split_infill_record
from retrofit.evaluation.benchmarks import EvalTask, benchmark_for
from retrofit.evaluation.generator import request_for
from retrofit.evaluation.specs import load_spec
from retrofit.tokenization import SIMPLE_CHAT_TEMPLATE, build_bpe_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
GSM8K_TEST = SHARED / "gsm8k" / "test.jsonl"
INFILL = SHARED / "humaneval_infilling"

# (training recipe, benchmark specs the README evaluates its checkpoints with)
PAIRS = {
    "llada-8b/gsm8k.yaml": ["gsm8k"],
    "llada-8b/mdm-gsm8k.yaml": ["gsm8k"],
    "llada-8b/code-infill.yaml": ["humaneval-infill-single-line", "humaneval-infill-multi-line",
                                  "humaneval-infill-random-span"],
    "llada-8b/mdm-code-infill.yaml": ["humaneval-infill-single-line", "humaneval-infill-multi-line",
                                      "humaneval-infill-random-span"],
    "llada-8b/gsm8k-paper.yaml": ["gsm8k-paper"],
    "llada-8b/mdm-gsm8k-paper.yaml": ["gsm8k-paper"],
    "llada-8b/code-infill-paper.yaml": ["humaneval-infill-single-line-paper"],
    "llada-8b/mdm-code-infill-paper.yaml": ["humaneval-infill-single-line-paper"],
    "tiny/flexmdm-gsm8k.yaml": ["gsm8k"],
    "tiny/mdm-gsm8k.yaml": ["gsm8k"],
    "tiny/flexmdm-infill.yaml": ["humaneval-infill-single-line"],
    "tiny/mdm-infill.yaml": ["humaneval-infill-single-line"],
    "dream-7b/gsm8k.yaml": ["gsm8k"],
    "dream-7b/mdm-gsm8k.yaml": ["gsm8k"],
    "dream-7b/code-infill.yaml": ["humaneval-infill-single-line", "humaneval-infill-multi-line",
                                  "humaneval-infill-random-span"],
    "dream-7b/mdm-code-infill.yaml": ["humaneval-infill-single-line", "humaneval-infill-multi-line",
                                      "humaneval-infill-random-span"],
    "tiny/flexmdm-dream-gsm8k.yaml": ["gsm8k"],
    "tiny/mdm-dream-gsm8k.yaml": ["gsm8k"],
}
INSTRUCTION = "Complete the following Python function."

if not GSM8K_TEST.is_file() or not INFILL.is_dir():
    pytest.skip(f"benchmark data not found under {SHARED} (clone ../shared beside the repository)",
                allow_module_level=True)


def recipe_data(recipe: str, path: Path):
    """The recipe's data config as training uses it, reading ``path`` instead of the Hub (every
    record whole: a layout is compared on rows that were not truncated)."""
    cfg = load_config(REPO / "recipes" / recipe, check_files=False)
    return dataclasses.replace(cfg.data, objective=cfg.objective.name, path=str(path), name=None,
                               revision=None, source="auto", streaming=False, max_records=None,
                               fields={}, num_epochs=1, shuffle=False,
                               max_length=max(cfg.data.max_length, 2048))


@pytest.fixture(scope="module", params=["chat", "plain"])
def tokenizer(request):
    """An LLaDA-like tokenizer: BOS, and (``chat``) a chat template with end-of-turn markers."""
    texts = [line for line in GSM8K_TEST.read_text().splitlines()[:400]]
    template = SIMPLE_CHAT_TEMPLATE if request.param == "chat" else None
    return build_bpe_tokenizer(texts, 1200, bos_token="<|bos|>", chat_template=template)


def pipeline_for(tokenizer, data_cfg, kind: str):
    """The inference pipeline of a checkpoint whose recorded layout is the recipe's."""
    import torch

    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config
    from retrofit.pipeline import Pipeline
    from retrofit.prompt_layout import PromptLayout

    ids = {"mask_token_id": tokenizer.mask_token_id, "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id}
    torch.manual_seed(0)
    backbone = LLaDAModelLM(tiny_llada_config(vocab_size=len(tokenizer), **ids))
    model = FlexMDM.retrofit(backbone, "tiny-llada", kind=kind, max_length=1024, tokenizer=tokenizer)
    model.config.prompt_layout = PromptLayout.from_data_config(data_cfg).to_dict()  # as train records it
    return Pipeline(model, tokenizer)


def test_every_stage2_recipe_is_paired_with_its_benchmarks():
    for path in sorted((REPO / "recipes").glob("*/*.yaml")):
        cfg = load_config(path, check_files=False) if path.parent.name != "accelerate" else None
        if cfg is None or cfg.data.kind not in ("gsm8k", "infill") or path.stem.startswith("demo"):
            continue
        assert f"{path.parent.name}/{path.name}" in PAIRS, f"pair {path} with its eval specs here"


@pytest.mark.parametrize("recipe", [r for r, specs in PAIRS.items() if "gsm8k" in specs[0]])
def test_gsm8k_prompt_is_the_training_prompt(recipe, tokenizer, tmp_path):
    records = [json.loads(line) for line in GSM8K_TEST.read_text().splitlines()[:12]]
    data_file = tmp_path / "test.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    data_cfg = recipe_data(recipe, data_file)
    rows = list(ExampleStream(data_cfg, tokenizer, eos_token_id=tokenizer.eos_token_id))
    assert len(rows) == len(records)
    pipeline = pipeline_for(tokenizer, data_cfg, data_cfg.objective)
    tasks = benchmark_for(load_spec(PAIRS[recipe][0])).load(data_file)
    prompts, suffixes = pipeline.encode([request_for(task) for task in tasks])
    assert suffixes is None
    for row, prompt in zip(rows, prompts):  # unshuffled: row i is record i
        assert row["input_ids"][: row["prompt_length"]] == prompt
        assert all(row["protected"][: row["prompt_length"]])


def infill_records(count: int) -> list[dict[str, str]]:
    """Training records made of HumanEval programs (prefix + canonical middle + suffix)."""
    tasks = benchmark_for(load_spec("humaneval-infill-multi-line")).load(INFILL)
    chosen = itertools.islice(tasks, 0, None, max(1, len(tasks) // count))
    return [{"instruction": INSTRUCTION, "output": t.prefix + t.reference + t.suffix}
            for t in itertools.islice(chosen, count)]


@pytest.mark.parametrize("recipe", [r for r, specs in PAIRS.items() if "humaneval" in specs[0]])
def test_infill_prompt_is_a_training_layout(recipe, tokenizer, tmp_path):
    records = infill_records(160)
    data_file = tmp_path / "code.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    data_cfg = recipe_data(recipe, data_file)
    stream = ExampleStream(data_cfg, tokenizer, eos_token_id=tokenizer.eos_token_id)
    rows = list(stream)
    assert len(rows) == len(records) and stream.stats.truncated == 0
    pipeline = pipeline_for(tokenizer, data_cfg, data_cfg.objective)
    for spec_name in PAIRS[recipe]:
        spec_instruction = load_spec(spec_name).instruction(data_cfg.objective)
        # The share of training rows with the benchmark's own layout: the dropped-instruction
        # share for a benchmark without instruction (HumanEval), the rest for a fixed one.
        fixed = data_cfg.infill_instruction is not None and data_cfg.infill_instruction == spec_instruction
        expected = data_cfg.empty_instruction_rate if not spec_instruction else (
            1 - data_cfg.empty_instruction_rate if fixed else 0.0)
        assert expected > 0, (
            f"{recipe}: no training row has {spec_name}'s layout (instruction {spec_instruction!r}): "
            "set data.empty_instruction_rate (no instruction) or data.infill_instruction")
        matching = 0
        for row, record in zip(rows, records):
            instruction, prefix, _, suffix = split_infill_record(
                data_cfg, record["instruction"], record["output"], epoch=0)
            # The evaluation encoding of this content, with the row's own instruction ...
            task = EvalTask(task_id="t", kind="infill", prompt=instruction or spec_instruction,
                            prefix=prefix, suffix=suffix)
            left, right = pipeline.encode([request_for(task)])
            ids = row["input_ids"]
            if data_cfg.objective == "flexmdm":
                trained = (ids[: row["middle_start"]], ids[row["middle_end"]:])
                assert (left[0], right[0]) == trained
                assert all(row["protected"][: row["middle_start"]] + row["protected"][row["middle_end"]:])
            else:
                assert right is None and left[0] == ids[: row["prompt_length"]]
            # ... and the rows whose instruction was dropped are exactly the benchmark's layout.
            matching += instruction == (spec_instruction or "")
        share = matching / len(rows)
        assert abs(share - expected) < 0.1, (spec_name, share, expected)
        assert matching > 0
