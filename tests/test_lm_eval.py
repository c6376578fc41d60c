"""lm-evaluation-harness's real evaluator (and `retrofit bpt`) on tiny trained checkpoints, offline.

Two tiny LLaDA-architecture models (FlexMDM and MDM baseline) are trained here for a few hundred
steps on a copy task: after the context ``"c>"`` the answer is ``"cc"`` (letters a-h), and a third
of the rows are the whole string ``"c>cc"`` after BOS alone. Local task YAMLs (built in the test's
tmp dir from local JSONL files) then ask, through ``lm_eval.simple_evaluate`` and through
``retrofit lm-eval``:

- ``generate_until`` with exact match: the copy (solvable) vs the next letter (not learned);
- ``multiple_choice`` (``loglikelihood``): the same two, eight choices each;
- ``loglikelihood_rolling``: strings that follow the rule vs strings that break it.

So every metric comes from the models' own outputs: solvable tasks score high, the others low.
The lm-eval tests skip when the optional extra is not installed; `retrofit bpt` needs none.
"""

from __future__ import annotations

import copy
import functools
import json
import string
from pathlib import Path

import pytest
import torch

from retrofit.adapter import FlexMDM
from retrofit.interpolant import forward_process, sample_times
from retrofit.models import LLaDAModelLM, tiny_llada_config
from retrofit.objective import flexmdm_loss, mdm_forward_process, mdm_loss
from retrofit.tokenization import build_char_tokenizer

LETTERS = "abcdefgh"


@pytest.fixture
def lm_eval_installed():
    """Skip unless lm-eval (the optional extra) is installed."""
    return pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install '.[lm-eval]'")
CANVAS = 4  # the MDM baseline's training canvas (answers EOS-padded to it)


def _rows(tokenizer, kind: str, size: int, generator: torch.Generator):
    """A training batch: (ids (B, L), lengths (B,), protected (B, L)), BOS + context protected.

    Two thirds ``BOS c > | c c`` (MDM: the answer EOS-padded to the canvas on half of them), a
    third ``BOS | c > c c`` (an unconditional string, for the rolling perplexity)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    letters = torch.randint(0, len(LETTERS), (size,), generator=generator).tolist()
    shapes = torch.randint(0, 3, (size,), generator=generator).tolist()
    sequences, prompts = [], []
    for letter, shape in zip(letters, shapes):
        char = tokenizer.convert_tokens_to_ids(LETTERS[letter])
        arrow = tokenizer.convert_tokens_to_ids(">")
        if shape == 2:
            sequences.append([bos, char, arrow, char, char])
            prompts.append(1)
        else:
            answer = [char, char]
            if kind == "mdm" and shape == 1:
                answer += [eos] * (CANVAS - len(answer))
            sequences.append([bos, char, arrow, *answer])
            prompts.append(3)
    width = max(map(len, sequences))
    ids = torch.full((size, width), eos, dtype=torch.long)
    protected = torch.zeros((size, width), dtype=torch.bool)
    for row, (sequence, prompt) in enumerate(zip(sequences, prompts)):
        ids[row, : len(sequence)] = torch.tensor(sequence)
        protected[row, :prompt] = True
    return ids, torch.tensor([len(s) for s in sequences]), protected


def _train(model: FlexMDM, tokenizer, kind: str, steps: int, lr: float) -> None:
    """Fit the copy task with the checkpoint kind's own loss (Adam, full fine-tuning)."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        ids, lengths, protected = _rows(tokenizer, kind, 48, generator)
        if kind == "flexmdm":
            times = sample_times(len(ids), generator=generator, stratified=True)
            batch = forward_process(
                ids, lengths, protected, times, insertion=model.insertion_schedule,
                unmasking=model.unmasking_schedule, mask_token_id=model.mask_token_id,
                pad_token_id=model.pad_token_id, generator=generator,
            )  # fmt: skip
            output = model(batch.input_ids, batch.lengths, batch.t, logits_positions=batch.is_mask)
            loss = flexmdm_loss(
                output.logits, output.gaps, batch, insertion=model.insertion_schedule,
                unmasking=model.unmasking_schedule,
            ).loss  # fmt: skip
        else:
            response = ~protected & (torch.arange(ids.shape[1])[None] < lengths[:, None])
            noisy, masked, ratio = mdm_forward_process(
                ids, response, mask_token_id=model.mask_token_id, generator=generator
            )
            logits = model(noisy, lengths, None).logits
            loss = mdm_loss(logits, ids, masked, ratio, response).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny MDM and FlexMDM checkpoints that solve the copy task (tokenizer saved with them): the
    MDM trained from scratch (250 steps), then retrofitted into the FlexMDM and fine-tuned (400
    steps), as the toolkit does with LLaDA."""
    root = tmp_path_factory.mktemp("lm-eval-models")
    tokenizer = build_char_tokenizer(LETTERS + ">" + string.ascii_letters[8:26] + " ",
                                     bos_token="<|bos|>", eos_token="<|pad|>")  # fmt: skip
    ids = {"mask_token_id": tokenizer.mask_token_id, "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id}  # fmt: skip
    torch.manual_seed(0)
    backbone = LLaDAModelLM(tiny_llada_config(vocab_size=len(tokenizer), **ids))
    backbone.save_pretrained(root / "base")
    torch.manual_seed(0)
    spec = {"lora": None, "full_finetune": True, "max_length": 32}  # tiny, fully fine-tuned
    mdm = FlexMDM.retrofit(str(root / "base"), "tiny-llada", kind="mdm", **spec, **ids)
    _train(mdm, tokenizer, "mdm", 250, 3e-3)
    torch.manual_seed(0)
    flexmdm = FlexMDM.retrofit(
        copy.deepcopy(mdm.lm), "tiny-llada", kind="flexmdm", **spec, **ids
    )
    _train(flexmdm, tokenizer, "flexmdm", 400, 1e-3)
    paths = {"mdm": mdm.save_pretrained(root / "mdm"), "flexmdm": flexmdm.save_pretrained(root / "flexmdm")}
    for path in paths.values():
        tokenizer.save_pretrained(path)
    return paths


def _write_tasks(directory: Path) -> list[str]:
    """Local JSONL data and task YAMLs for the six tasks; returns their names."""
    docs = [{"q": f"{c}>", "copy": LETTERS.index(c), "shift": (LETTERS.index(c) + 1) % 8,
             "copy_text": c * 2, "shift_text": LETTERS[(LETTERS.index(c) + 1) % 8] * 2}
            for c in LETTERS * 2]  # fmt: skip
    (directory / "letters.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    strings = [{"text": f"{c}>{c}{c}"} for c in LETTERS]
    broken = [{"text": f"{c}>{LETTERS[(i + 3) % 8]}{LETTERS[(i + 5) % 8]}"}
              for i, c in enumerate(LETTERS)]  # fmt: skip
    (directory / "rule.jsonl").write_text("".join(json.dumps(d) + "\n" for d in strings))
    (directory / "broken.jsonl").write_text("".join(json.dumps(d) + "\n" for d in broken))
    choices = json.dumps([c * 2 for c in LETTERS])
    names = []
    for rule in ("copy", "shift"):
        names += [f"letters_{rule}_gen", f"letters_{rule}_mc"]
        (directory / f"letters_{rule}_gen.yaml").write_text(f"""task: letters_{rule}_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / "letters.jsonl"}
test_split: test
output_type: generate_until
doc_to_text: "{{{{q}}}}"
doc_to_target: "{{{{{rule}_text}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {CANVAS}
  do_sample: false
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
""")
        (directory / f"letters_{rule}_mc.yaml").write_text(f"""task: letters_{rule}_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / "letters.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: {choices}
doc_to_target: "{{{{{rule}}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
""")
    for name in ("rule", "broken"):
        names.append(f"strings_{name}_ppl")
        (directory / f"strings_{name}_ppl.yaml").write_text(f"""task: strings_{name}_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {directory / f"{name}.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
""")
    return names


def _metric(results: dict, task: str, name: str) -> float:
    return float(results["results"][task][f"{name},none"])


@pytest.mark.parametrize("kind", ["flexmdm", "mdm"])
def test_lm_eval_scores_come_from_the_model(
    lm_eval_installed, checkpoints, tmp_path, monkeypatch, kind
):
    """simple_evaluate with the registered model `retrofit` on the three request types."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    import retrofit.lm_eval  # noqa: F401  (registers `retrofit`)

    tasks = _write_tasks(tmp_path)
    settings = {"steps": 16} if kind == "flexmdm" else {"block_length": CANVAS}
    results = simple_evaluate(
        model="retrofit",
        model_args={"pretrained": str(checkpoints[kind]), "mc_num": 32, "dtype": "float32",
                    "device": "cpu", "likelihood_batch_size": 256, **settings},
        tasks=tasks, batch_size=64,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True, bootstrap_iters=0,
    )
    assert _metric(results, "letters_copy_gen", "exact_match") >= 0.75
    assert _metric(results, "letters_shift_gen", "exact_match") <= 0.25
    assert _metric(results, "letters_copy_mc", "acc") >= 0.75
    assert _metric(results, "letters_shift_mc", "acc") <= 0.25
    assert _metric(results, "strings_rule_ppl", "bits_per_byte") + 0.5 < _metric(
        results, "strings_broken_ppl", "bits_per_byte"
    )
    # The logged samples are the model's answers: the copies, cut at the first stop.
    samples = results["samples"]["letters_copy_gen"]
    correct = [s["filtered_resps"][0] == s["doc"]["copy_text"] for s in samples]
    assert len(samples) == 16 and sum(correct) >= 12


def test_flexmdm_cap_is_a_cap_and_until_cuts(lm_eval_installed, checkpoints):
    """FlexMDM: max_gen_toks bounds the answer, the model picks its length under it; an `until`
    string cuts the answer; per-request temperature is honoured; MDM: the canvas."""
    from lm_eval.api.instance import Instance

    from retrofit.lm_eval import RetrofitLM

    def request(context, **kwargs):
        return Instance("generate_until", {}, (context, kwargs), 0, ("t", 0, 1))

    flex = RetrofitLM(str(checkpoints["flexmdm"]), dtype="float32", device="cpu", steps=16)
    answers = flex.generate_until([request("c>", max_gen_toks=12), request("c>", max_gen_toks=1),
                                   request("c>", max_gen_toks=12, until=["c"])])  # fmt: skip
    assert answers == ["cc", "c", ""]
    sampled = flex.generate_until([request(f"{c}>", max_gen_toks=12, temperature=5.0, do_sample=True)
                                   for c in LETTERS])  # fmt: skip
    assert sampled != [c * 2 for c in LETTERS]  # temperature 5 makes mistakes
    mdm = RetrofitLM(str(checkpoints["mdm"]), dtype="float32", device="cpu")
    settings = mdm._settings({}, 3, 4)
    assert settings["gen_length"] == 4 and settings["steps"] == 4
    assert mdm.generate_until([request("c>", max_gen_toks=4)]) == ["cc"]


def test_apply_chat_template_uses_the_recorded_layout(lm_eval_installed, checkpoints):
    from retrofit.lm_eval import RetrofitLM

    lm = RetrofitLM(str(checkpoints["flexmdm"]), dtype="float32", device="cpu")
    chat = [{"role": "user", "content": "c>"}, {"role": "assistant", "content": "cc"},
            {"role": "user", "content": "d>"}]  # fmt: skip
    assert lm.apply_chat_template(chat) == "User: c>\nAssistant: cc\nUser: d>\nAssistant: "
    with pytest.raises(ValueError, match="neither retrofit lm-eval settings"):
        RetrofitLM(str(checkpoints["flexmdm"]), dtype="float32", device="cpu", gen_length=4)


def test_retrofit_lm_eval_command(lm_eval_installed, checkpoints, tmp_path, monkeypatch):
    """`retrofit lm-eval --model PATH --tasks ...` runs lm-eval's command line."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import lm_eval.tasks

    from retrofit.cli import main

    # lm-eval's command line indexes its ~10k built-in task files first (25 s here): the local
    # tasks are all this run needs.
    monkeypatch.setattr(lm_eval.tasks, "TaskManager",
                        functools.partial(lm_eval.tasks.TaskManager, include_defaults=False))

    _write_tasks(tmp_path)
    output = tmp_path / "out"
    argv = ["lm-eval", "--model", str(checkpoints["flexmdm"]), "--model_args",
            "mc_num=8,steps=16,dtype=float32", "--tasks", "letters_copy_gen,letters_copy_mc",
            "--include_path", str(tmp_path), "--device", "cpu", "--output_path", str(output)]  # fmt: skip
    assert main(argv) == 0
    (result_file,) = output.rglob("results_*.json")
    results = json.loads(result_file.read_text())
    assert results["results"]["letters_copy_gen"]["exact_match,none"] >= 0.75
    assert results["config"]["model"] == "retrofit"


def test_bits_per_token_command_compares_checkpoints(checkpoints, tmp_path, capsys):
    """`retrofit bpt`: both kinds side by side, intervals around the estimate, and held-out strings
    that follow the learned rule cost fewer bits than strings that break it."""
    from retrofit.bits_per_token import cli_main

    _write_tasks(tmp_path)
    results = {}
    for name in ("rule", "broken"):
        output = tmp_path / f"bpt-{name}.json"
        argv = ["--model", str(checkpoints["flexmdm"]), "--model", str(checkpoints["mdm"]),
                "--data", str(tmp_path / f"{name}.jsonl"), "--mc-num", "32", "--dtype", "float32",
                "--device", "cpu", "--no-progress", "--output", str(output)]  # fmt: skip
        assert cli_main(argv) == 0
        results[name] = json.loads(output.read_text())["results"]
    table = capsys.readouterr().out
    assert "| bits/token (bound) |" in table and "flexmdm" in table and "mdm" in table
    for kind in ("flexmdm", "mdm"):
        rule = results["rule"][str(checkpoints[kind])]
        low, high = rule["bits_per_token_interval"]
        assert rule["kind"] == kind and rule["records"] == 8 and rule["tokens"] == 32
        assert low < rule["bits_per_token"] < high and rule["bits_per_byte"] == rule["bits_per_token"]
        assert rule["bits_per_token"] + 0.5 < results["broken"][str(checkpoints[kind])]["bits_per_token"]
