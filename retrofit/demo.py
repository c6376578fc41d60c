"""`retrofit demo`: the paper's length claim reproduced end to end on CPU, in minutes.

    retrofit demo                      # ~5 minutes on 2 CPU cores; writes demo_output/
    retrofit demo --quick              # the same path at test size (~15 seconds)
    retrofit demo --stage eval         # re-run one stage (data | pretrain | finetune | eval)

What it runs, using only the toolkit's public pieces:

1. **Data** (``demo_output/data/``): balanced-parenthesis (Dyck) strings whose lengths follow a
   known multi-modal distribution ``{4: 0.1, 16: 0.4, 32: 0.4, 64: 0.1}``, written as local
   jsonl files of prompt/response records, and a real ``PreTrainedTokenizerFast`` with the
   vocabulary ``( ) mask eos bos`` (pad = eos, as in LLaDA). The task is unconditional: the
   tokenizer's chat template renders every prompt as BOS alone, so each training row is the
   protected BOS followed by the string. (LLaDA has no absolute position embedding: without a
   fixed first token, a canvas of identical masks gives identical predictions at every position.)
2. **Pretrain** (``recipes/tiny/demo-pretrain.yaml``) a tiny LLaDA-architecture MDM from scratch
   with the MDM objective on fixed canvases (BOS + 64 tokens) padded with EOS, the way LLaDA is
   trained. The result is cached under ``demo_output/cache/pretrain-<hash of its settings>`` so a
   rerun skips this stage.
3. **Fine-tune two arms for the same budget** through ``retrofit.train`` (the entry point of the
   big recipes): the FlexMDM arm (``demo-flexmdm.yaml``: the pretrained MDM retrofitted with
   ``adapters/demo-brackets.yaml``, FlexMDM objective on the strings at their true lengths) and
   the MDM baseline (``demo-mdm.yaml``: the same backbone and adapter spec, MDM objective on
   EOS-padded canvases); same steps, batch size and learning rate.
4. **Evaluate** both: unconditional samples (length fidelity = Wasserstein-1 distance between
   generated and data lengths, histogram PNG; validity = % balanced) and infilling of held-out
   strings (see :func:`make_infill_tasks` for the protocol), plus a check that the FlexMDM's
   insertion head approaches the Bayes-optimal expected number of missing tokens.
5. **Report**: a table printed at the end and written to ``demo_output/results.md`` (with the
   PNGs, checkpoint locations and the command of every stage), and ``results.json``.

Everything is seeded (``--seed``); a run is deterministic for a fixed seed and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shlex
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LENGTH_DISTRIBUTION",
    "DemoSettings",
    "InfillTask",
    "bayes_expected_missing",
    "build_bracket_tokenizer",
    "cli_main",
    "is_balanced",
    "make_infill_tasks",
    "mdm_infill",
    "random_dyck",
    "run_demo",
    "sample_dyck_strings",
]

# The data's length distribution (string length in characters -> probability).
LENGTH_DISTRIBUTION: dict[int, float] = {4: 0.1, 16: 0.4, 32: 0.4, 64: 0.1}
# The MDM arms see every string on a canvas of this many tokens after BOS, padded with EOS.
CANVAS_LENGTH = 64
# Every prompt renders to BOS alone: the bracket task is unconditional generation after BOS.
BOS_ONLY_CHAT_TEMPLATE = "{{ bos_token }}"
PROMPT_TEXT = "balanced brackets"
# The MDM baseline samples in semi-autoregressive blocks of this many tokens (eval/lengths.yaml).
MDM_BLOCK_LENGTH = 32
# Infilling: the held-out strings of these lengths, middles of 1..MAX_MIDDLE characters.
INFILL_STRING_LENGTHS = (16, 32)
MAX_MIDDLE = 16
STAGES = ("all", "data", "pretrain", "finetune", "eval")
RECIPES = {
    "pretrain": "recipes/tiny/demo-pretrain.yaml",
    "flexmdm": "recipes/tiny/demo-flexmdm.yaml",
    "mdm": "recipes/tiny/demo-mdm.yaml",
}
ARMS = ("flexmdm", "mdm")
ARM_TITLES = {"flexmdm": "FlexMDM (retrofit)", "mdm": "MDM baseline"}


# ---------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------


@dataclass
class DemoSettings:
    """Sizes of one demo run. ``full()`` is ``retrofit demo``, ``quick()`` the test-size run.

    Model: a LLaDA with ``d_model``, ``n_layers`` blocks of ``n_heads`` heads and an MLP of
    ``mlp_hidden_size``. Training: steps / micro-batch / lr of the pretraining and of each
    fine-tuning arm (both arms get the same budget). Evaluation: ``num_samples`` unconditional
    samples and ``num_infill`` infilling tasks per arm, ``sampling_steps`` sampler steps.
    """

    seed: int = 0
    num_train: int = 20_000
    num_heldout: int = 2_000
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    mlp_hidden_size: int = 384
    pretrain_steps: int = 600
    pretrain_batch_size: int = 32
    pretrain_lr: float = 3e-3
    finetune_steps: int = 400
    finetune_batch_size: int = 32
    finetune_lr: float = 1e-3
    num_samples: int = 256
    num_infill: int = 128
    eval_batch_size: int = 128
    sampling_steps: int = 64
    temperature: float = 1.0
    bayes_rows: int = 256
    progress: bool = True

    @classmethod
    def full(cls, seed: int = 0) -> DemoSettings:
        """The default demo (``retrofit demo``)."""
        return cls(seed=seed)

    @classmethod
    def quick(cls, seed: int = 0) -> DemoSettings:
        """A much smaller run of the same path (``retrofit demo --quick``; the end-to-end test)."""
        return cls(
            seed=seed,
            num_train=2_000,
            num_heldout=400,
            d_model=32,
            n_layers=2,
            n_heads=2,
            mlp_hidden_size=64,
            pretrain_steps=30,
            pretrain_batch_size=16,
            finetune_steps=20,
            finetune_batch_size=16,
            num_samples=24,
            num_infill=16,
            sampling_steps=16,
            bayes_rows=32,
            progress=False,
        )


# ---------------------------------------------------------------------------------------------
# The bracket task
# ---------------------------------------------------------------------------------------------


def random_dyck(num_pairs: int, rng: random.Random) -> str:
    """A uniformly random balanced-parenthesis string with ``num_pairs`` pairs.

    Cycle lemma: a random arrangement of ``n`` opening and ``n + 1`` closing brackets has exactly
    one rotation whose proper prefixes all have depth >= 0 (the one starting right after the
    first minimum of the depth walk); dropping its final ``)`` gives a uniform Dyck word.
    """
    if num_pairs < 0:
        raise ValueError(f"num_pairs must be >= 0, got {num_pairs}")
    symbols = ["("] * num_pairs + [")"] * (num_pairs + 1)
    rng.shuffle(symbols)
    depth, lowest, cut = 0, 0, 0
    for index, symbol in enumerate(symbols):
        depth += 1 if symbol == "(" else -1
        if depth < lowest:
            lowest, cut = depth, index + 1
    rotated = symbols[cut:] + symbols[:cut]
    return "".join(rotated[:-1])


def is_balanced(text: str) -> bool:
    """True when ``text`` consists of ``(`` / ``)`` only and is a balanced (Dyck) string.

    The empty string counts as unbalanced here: the data never contains it, so a model that
    emits it has not produced a valid sample.
    """
    if not text:
        return False
    depth = 0
    for character in text:
        if character == "(":
            depth += 1
        elif character == ")":
            depth -= 1
            if depth < 0:
                return False
        else:
            return False
    return depth == 0


def sample_dyck_strings(
    count: int, rng: random.Random, lengths: Mapping[int, float] = LENGTH_DISTRIBUTION
) -> list[str]:
    """``count`` Dyck strings whose lengths are drawn from ``lengths`` (length -> probability)."""
    for length in lengths:
        if length <= 0 or length % 2:
            raise ValueError(f"Dyck string lengths must be positive and even, got {length}")
    choices, weights = list(lengths), list(lengths.values())
    return [random_dyck(rng.choices(choices, weights)[0] // 2, rng) for _ in range(count)]


@dataclass
class InfillTask:
    """One infilling problem: fill ``middle``'s place between ``prefix`` and ``suffix``.

    The model is not told ``len(middle)``; any middle that makes ``prefix + middle + suffix``
    balanced counts as correct.
    """

    prefix: str
    middle: str
    suffix: str


def make_infill_tasks(strings: Sequence[str], count: int, rng: random.Random) -> list[InfillTask]:
    """Infilling tasks from held-out strings of length 16 or 32.

    Protocol: a middle of ``m ~ U{1..min(16, n - 2)}`` characters at a uniform position is
    removed (prefix and suffix non-empty). The FlexMDM grows the middle between prefix and
    suffix (insertions only there). The MDM baseline gets a fixed canvas of ``MAX_MIDDLE`` = 16
    masks between them (``BOS + prefix + 16 masks + suffix``, then EOS up to its BOS + 64 canvas)
    and every EOS it writes into the canvas is dropped, as LLaDA drops EOS when decoding. Both
    decode greedily.
    """
    pool = [text for text in strings if len(text) in INFILL_STRING_LENGTHS]
    if not pool:
        raise ValueError(f"no held-out strings of lengths {INFILL_STRING_LENGTHS} to infill")
    tasks = []
    for _ in range(count):
        text = rng.choice(pool)
        middle_length = rng.randint(1, min(MAX_MIDDLE, len(text) - 2))
        start = rng.randint(1, len(text) - middle_length - 1)
        end = start + middle_length
        tasks.append(InfillTask(text[:start], text[start:end], text[end:]))
    return tasks


def build_bracket_tokenizer():
    """The demo's tokenizer: ``(`` = 0, ``)`` = 1, mask ``<|mdm_mask|>`` = 2, ``<|eos|>`` = 3
    (pad = eos, as in LLaDA), ``<|bos|>`` = 4; its chat template renders any prompt as BOS alone.
    A ``transformers.PreTrainedTokenizerFast``."""
    from retrofit.tokenization import build_char_tokenizer

    return build_char_tokenizer(
        "()",
        pad_token="<|eos|>",
        eos_token="<|eos|>",
        bos_token="<|bos|>",
        chat_template=BOS_ONLY_CHAT_TEMPLATE,
        model_max_length=256,
    )


def bayes_expected_missing(
    present: int, alpha: float, lengths: Mapping[int, float] = LENGTH_DISTRIBUTION
) -> float:
    """Bayes-optimal total number of tokens still to insert, ``E[L - l | l, t]``, with no content.

    ``sum_L (L - l) p(L) Bin(l; L, alpha(t)) / sum_L p(L) Bin(l; L, alpha(t))`` (spec section 8):
    each of the ``L`` tokens is present at time t independently with probability alpha(t).
    """
    weights = {}
    for length, probability in lengths.items():
        if present > length:
            continue
        weights[length] = (
            probability
            * math.comb(length, present)
            * alpha**present
            * (1 - alpha) ** (length - present)
        )
    total = sum(weights.values())
    if total <= 0:
        return 0.0
    return sum((length - present) * weight for length, weight in weights.items()) / total


# ---------------------------------------------------------------------------------------------
# Files and paths
# ---------------------------------------------------------------------------------------------


@dataclass
class DemoPaths:
    """Where one demo run keeps everything (all under ``root``)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def train_file(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def heldout_file(self) -> Path:
        return self.data / "heldout.jsonl"

    @property
    def infill_file(self) -> Path:
        return self.data / "infill.jsonl"

    @property
    def tokenizer(self) -> Path:
        return self.data / "tokenizer"

    def eval_tasks(self, benchmark: str) -> Path:
        """The eval runner's task file of one demo benchmark (``unconditional`` / ``infill``)."""
        return self.data / f"eval_{benchmark}.jsonl"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def arm(self, arm: str) -> Path:
        return self.root / arm

    @property
    def eval(self) -> Path:
        return self.root / "eval"


def _write_jsonl(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def _recipe_path(name: str) -> Path:
    path = _repo_root() / RECIPES[name]
    if not path.is_file():
        raise FileNotFoundError(
            f"demo recipe {path} is missing; reinstall or restore {RECIPES[name]}"
        )
    return path


def _log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# Stage 1: data
# ---------------------------------------------------------------------------------------------


def write_data(paths: DemoPaths, settings: DemoSettings) -> dict[str, Any]:
    """Generate the training / held-out strings, the infilling tasks and the tokenizer."""
    rng = random.Random(settings.seed)
    train = sample_dyck_strings(settings.num_train, rng)
    heldout = sample_dyck_strings(settings.num_heldout, rng)
    tasks = make_infill_tasks(heldout, settings.num_infill, rng)
    _write_jsonl(paths.train_file, [{"prompt": PROMPT_TEXT, "response": text} for text in train])
    _write_jsonl(
        paths.heldout_file, [{"prompt": PROMPT_TEXT, "response": text} for text in heldout]
    )
    _write_jsonl(paths.infill_file, [asdict(task) for task in tasks])
    # The eval runner's task files (`task: jsonl` specs, see eval_spec): each unconditional sample
    # is paired with one held-out string, whose length is its reference length.
    _write_jsonl(
        paths.eval_tasks("unconditional"),
        [
            {"task_id": f"unconditional/{index}", "prompt": PROMPT_TEXT, "reference": text}
            for index, text in enumerate(heldout[: settings.num_samples])
        ],
    )
    _write_jsonl(
        paths.eval_tasks("infill"),
        [
            {"task_id": f"infill/{index}", "prefix": task.prefix, "suffix": task.suffix,
             "reference": task.middle}
            for index, task in enumerate(tasks)
        ],
    )
    tokenizer = build_bracket_tokenizer()
    tokenizer.save_pretrained(str(paths.tokenizer))
    info = {
        "num_train": len(train),
        "num_heldout": len(heldout),
        "num_infill": len(tasks),
        "length_distribution": {str(k): v for k, v in LENGTH_DISTRIBUTION.items()},
        "train_sha256": hashlib.sha256(paths.train_file.read_bytes()).hexdigest(),
        "vocab": tokenizer.get_vocab(),
    }
    (paths.data / "data_info.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------------------------
# Stages 2-3: training through retrofit.train
# ---------------------------------------------------------------------------------------------


def _common_overrides(paths: DemoPaths, settings: DemoSettings) -> list[str]:
    return [
        f"data.path={paths.train_file}",
        f"data.cache_dir={paths.cache / 'datasets'}",
        f"tokenizer.name={paths.tokenizer}",
        f"training.seed={settings.seed}",
        f"data.seed={settings.seed}",
        f"logging.progress_bar={'true' if settings.progress else 'false'}",
    ]


def pretrain_overrides(paths: DemoPaths, settings: DemoSettings, output_dir: Path) -> list[str]:
    """The ``key=value`` overrides of ``demo-pretrain.yaml`` for this run."""
    tiny = (
        f"{{d_model: {settings.d_model}, n_layers: {settings.n_layers}, n_heads: {settings.n_heads}, "
        f"n_kv_heads: {settings.n_heads}, mlp_hidden_size: {settings.mlp_hidden_size}, "
        f"max_sequence_length: 256}}"
    )
    return [
        f"output_dir={output_dir}",
        *_common_overrides(paths, settings),
        f"model.tiny={tiny}",
        f"training.max_steps={settings.pretrain_steps}",
        f"training.micro_batch_size={settings.pretrain_batch_size}",
        f"optimizer.lr={settings.pretrain_lr}",
    ]


def finetune_overrides(
    paths: DemoPaths, settings: DemoSettings, base_dir: Path, output_dir: Path
) -> list[str]:
    """The overrides of ``demo-flexmdm.yaml`` / ``demo-mdm.yaml`` (identical for both arms)."""
    return [
        f"output_dir={output_dir}",
        f"model.base={base_dir}",
        *_common_overrides(paths, settings),
        f"training.max_steps={settings.finetune_steps}",
        f"training.micro_batch_size={settings.finetune_batch_size}",
        f"optimizer.lr={settings.finetune_lr}",
    ]


def _train_command(recipe: str, overrides: Sequence[str]) -> str:
    return " ".join(["retrofit", "train", recipe, *(shlex.quote(item) for item in overrides)])


def _load_recipe(name: str, overrides: Sequence[str]):
    from retrofit.config import load_config

    return load_config(_recipe_path(name), overrides)


def _pretrain_key(paths: DemoPaths, settings: DemoSettings) -> str:
    """Hash of everything the pretrained MDM depends on: its resolved recipe (paths excluded),
    the training data and the tokenizer."""
    from retrofit import __version__
    from retrofit.config import to_dict

    cfg = _load_recipe("pretrain", pretrain_overrides(paths, settings, paths.cache / "pending"))
    resolved = to_dict(cfg)
    resolved.pop("output_dir", None)
    resolved["logging"] = None
    for key in ("path", "cache_dir"):
        resolved["data"].pop(key, None)
    resolved["tokenizer"].pop("name", None)
    payload = {
        "recipe": resolved,
        "data": hashlib.sha256(paths.train_file.read_bytes()).hexdigest(),
        "vocab": json.loads((paths.data / "data_info.json").read_text())["vocab"],
        "retrofit": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def pretrain_plan(paths: DemoPaths, settings: DemoSettings) -> dict[str, Any]:
    """Where the pretrained MDM of these settings lives (cache key) and the command that trains it."""
    key = _pretrain_key(paths, settings)
    output_dir = paths.cache / f"pretrain-{key}"
    overrides = pretrain_overrides(paths, settings, output_dir)
    return {
        "dir": str(output_dir),
        "final": str(output_dir / "final"),
        "cache_key": key,
        "command": _train_command(RECIPES["pretrain"], overrides),
        "overrides": overrides,
    }


def run_pretrain(paths: DemoPaths, settings: DemoSettings, *, force: bool) -> dict[str, Any]:
    """Pretrain the tiny MDM (or reuse the cached one); returns where it is and the command."""
    from retrofit.train import train

    info = pretrain_plan(paths, settings)
    output_dir, final = Path(info["dir"]), Path(info["final"])
    if final.is_dir() and (final / "retrofit_config.json").is_file() and not force:
        _log(f"pretrained MDM found in the cache: {final} (use --force to retrain)")
        info["cached"] = True
        info.update(_summary_of(output_dir))
        return info
    if output_dir.exists():
        shutil.rmtree(output_dir)
    _log(f"pretraining a tiny LLaDA MDM ({settings.pretrain_steps} steps) -> {output_dir}")
    cfg = _load_recipe("pretrain", info["overrides"])
    train(cfg, recipe_path=RECIPES["pretrain"])
    info["cached"] = False
    info.update(_summary_of(output_dir))
    return info


def _summary_of(output_dir: Path) -> dict[str, Any]:
    summary_path = output_dir / "train_summary.json"
    if not summary_path.is_file():
        return {}
    summary = json.loads(summary_path.read_text())
    return {
        key: summary.get(key) for key in ("steps", "elapsed_s", "final_loss", "global_batch_size")
    }


def finetune_plan(paths: DemoPaths, settings: DemoSettings, base_dir: Path) -> dict[str, Any]:
    """Output directory and command of each arm (plus its training summary once trained)."""
    plans = {}
    for arm in ARMS:
        output_dir = paths.arm(arm)
        overrides = finetune_overrides(paths, settings, base_dir, output_dir)
        plans[arm] = {
            "dir": str(output_dir),
            "final": str(output_dir / "final"),
            "command": _train_command(RECIPES[arm], overrides),
            "overrides": overrides,
            **_summary_of(output_dir),
        }
    return plans


def run_finetune(paths: DemoPaths, settings: DemoSettings, base_dir: Path) -> dict[str, Any]:
    """Fine-tune both arms from the pretrained MDM with the same budget."""
    from retrofit.train import train

    plans = finetune_plan(paths, settings, base_dir)
    for arm in ARMS:
        output_dir = Path(plans[arm]["dir"])
        if output_dir.exists():
            shutil.rmtree(output_dir)
        _log(
            f"fine-tuning the {ARM_TITLES[arm]} arm ({settings.finetune_steps} steps) -> {output_dir}"
        )
        cfg = _load_recipe(arm, plans[arm]["overrides"])
        train(cfg, recipe_path=RECIPES[arm])
    return finetune_plan(paths, settings, base_dir)


# ---------------------------------------------------------------------------------------------
# Stage 4: evaluation
# ---------------------------------------------------------------------------------------------


def _decode(ids: Sequence[int], vocab_inverse: Mapping[int, str], drop: set[int]) -> str:
    """Token ids -> text, dropping the ids in ``drop`` (EOS / pad) and marking others as '?'."""
    return "".join(vocab_inverse.get(i, "?") for i in ids if i not in drop)


def mdm_infill(
    model,
    prefixes: Sequence[Sequence[int]],
    suffixes: Sequence[Sequence[int]],
    *,
    canvas: int,
    total_length: int,
    steps: int,
    eos_token_id: int,
    forbid_token_ids: Sequence[int] = (),
    batch_size: int = 64,
) -> list[list[int]]:
    """Fill a fixed canvas of ``canvas`` masks between each prefix and suffix with an MDM.

    Each row is ``prefix + [mask] * canvas + suffix`` followed by EOS up to ``total_length`` (the
    EOS-padded layout the MDM was trained on). The canvas is unmasked in ``steps`` steps, LLaDA
    style: each step reveals :func:`retrofit.sampling.num_transfer_tokens` masks, the most
    confident argmax predictions first (low-confidence remasking, temperature 0). Returns the
    ``canvas`` generated ids of every row (EOS included: the caller decides what to drop). The
    mask and ``forbid_token_ids`` are never emitted.
    """
    import torch

    from retrofit.sampling import num_transfer_tokens

    mask_id = model.mask_token_id
    outputs: list[list[int]] = []
    for start in range(0, len(prefixes), batch_size):
        rows = range(start, min(start + batch_size, len(prefixes)))
        width = max(total_length, max(len(prefixes[i]) + canvas + len(suffixes[i]) for i in rows))
        input_ids = torch.full((len(rows), width), eos_token_id, dtype=torch.long)  # (B, L)
        canvas_start = []
        for row, index in enumerate(rows):
            prefix, suffix = list(prefixes[index]), list(suffixes[index])
            layout = prefix + [mask_id] * canvas + suffix
            input_ids[row, : len(layout)] = torch.tensor(layout, dtype=torch.long)
            canvas_start.append(len(prefix))
        lengths = torch.full((len(rows),), width, dtype=torch.long)  # (B,)
        is_mask = input_ids == mask_id  # (B, L)
        schedule = num_transfer_tokens(is_mask.sum(dim=1), steps)  # (B, steps)
        with torch.inference_mode():
            for step in range(steps):
                if not is_mask.any():
                    break
                logits = model(input_ids, lengths, None, logits_positions=is_mask).logits  # (N, V)
                logits = logits.float()
                logits[:, [mask_id, *forbid_token_ids]] = -math.inf  # never emitted
                probabilities = torch.softmax(logits, dim=-1)
                confidence, tokens = probabilities.max(dim=-1)  # (N,), (N,)
                full_confidence = torch.full(is_mask.shape, -math.inf)  # (B, L)
                full_tokens = torch.zeros(is_mask.shape, dtype=torch.long)  # (B, L)
                full_confidence[is_mask] = confidence
                full_tokens[is_mask] = tokens
                for row in range(len(rows)):
                    count = int(schedule[row, step])
                    if count <= 0:
                        continue
                    chosen = torch.topk(full_confidence[row], count).indices
                    input_ids[row, chosen] = full_tokens[row, chosen]
                    is_mask[row, chosen] = False
        for row in range(len(rows)):
            begin = canvas_start[row]
            outputs.append(input_ids[row, begin : begin + canvas].tolist())
    return outputs


BENCHMARKS = ("unconditional", "infill")


def check_brackets(task: Any, completion: str) -> bool:
    """The demo benchmarks' verdict (``metric.check`` of :func:`eval_spec`): the sample, or the
    infilled ``prefix + middle + suffix``, is a balanced string."""
    return is_balanced((task.prefix or "") + completion + (task.suffix or ""))


def eval_spec(benchmark: str, batch_size: int) -> dict[str, Any]:
    """The eval runner spec of one demo benchmark: a ``task: jsonl`` benchmark over the task file
    written by the data stage, scored by :func:`check_brackets`."""
    return {
        "name": f"brackets-{benchmark}",
        "task": "jsonl",
        "data": {"file": f"eval_{benchmark}.jsonl"},
        "generation": {"batch_size": batch_size},
        "metric": {"check": "retrofit.demo:check_brackets", "primary": "accuracy"},
    }


class ArmSampler:
    """``generate_fn`` of the eval runner for one demo arm and benchmark.

    FlexMDM: unconditional samples grow from BOS at the sampling temperature; infilling inserts
    only between ``BOS + prefix`` and the suffix, greedily. MDM baseline: LLaDA's sampler on a
    ``CANVAS_LENGTH`` canvas in blocks of ``MDM_BLOCK_LENGTH``; infilling fills a fixed canvas
    (:func:`mdm_infill`). Every sample draws from the random stream of its task id and sample
    index (``retrofit.evaluation.sample_stream_id``), so batching never changes it. Texts drop EOS
    / pad, as LLaDA decodes; lengths are in tokens (= characters).
    """

    def __init__(self, arm: str, model: Any, vocab: Mapping[str, int], benchmark: str,
                 settings: DemoSettings) -> None:
        self.arm, self.model, self.benchmark, self.settings = arm, model, benchmark, settings
        self.encode = {"(": vocab["("], ")": vocab[")"]}
        self.inverse = {index: token for token, index in vocab.items() if len(token) == 1}
        self.bos = [vocab["<|bos|>"]]
        self.eos = model.eos_token_id if model.eos_token_id is not None else model.pad_token_id
        # BOS only ever starts a row: neither arm may emit it (nor the mask, nor pad = EOS for
        # the FlexMDM).
        self.flex_forbidden = [model.mask_token_id, model.pad_token_id, self.bos[0]]

    def __call__(self, tasks: Sequence[Any]) -> list[Any]:
        from retrofit.evaluation import Generation, sample_stream_id
        from retrofit.sampling import flexmdm_generate, mdm_generate

        settings, model = self.settings, self.model
        row_ids = [sample_stream_id(task.task_id, task.sample_index) for task in tasks]
        common = {"steps": settings.sampling_steps, "progress": False, "row_ids": row_ids}
        if self.benchmark == "unconditional":
            prompts = [self.bos for _ in tasks]
            if self.arm == "flexmdm":
                answers = flexmdm_generate(
                    model, prompts, temperature=settings.temperature, seed=settings.seed,
                    max_length=2 * CANVAS_LENGTH, forbid_token_ids=self.flex_forbidden, **common,
                ).sequences
            else:
                answers = mdm_generate(
                    model, prompts, gen_length=CANVAS_LENGTH, block_length=MDM_BLOCK_LENGTH,
                    temperature=settings.temperature, seed=settings.seed,
                    forbid_token_ids=self.bos, **common,
                ).sequences
        else:
            prefixes = [self.bos + [self.encode[c] for c in task.prefix] for task in tasks]
            suffixes = [[self.encode[c] for c in task.suffix] for task in tasks]
            if self.arm == "flexmdm":
                answers = flexmdm_generate(
                    model, prefixes, suffixes=suffixes, seed=settings.seed + 1,
                    max_length=2 * CANVAS_LENGTH, forbid_token_ids=self.flex_forbidden, **common,
                ).sequences
            else:
                answers = mdm_infill(
                    model, prefixes, suffixes, canvas=MAX_MIDDLE, total_length=1 + CANVAS_LENGTH,
                    steps=min(settings.sampling_steps, MAX_MIDDLE), eos_token_id=self.eos,
                    forbid_token_ids=self.bos,
                )
        texts = [_decode(ids, self.inverse, {self.eos, model.pad_token_id}) for ids in answers]
        return [Generation(text, num_tokens=len(text)) for text in texts]


def _checkpoint_digest(checkpoint: Path) -> str:
    """sha256 over the checkpoint's weight files: eval results are tied to these weights."""
    digest = hashlib.sha256()
    for path in sorted(checkpoint.glob("*.safetensors")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def evaluate_arm(
    arm: str, checkpoint: Path, paths: DemoPaths, settings: DemoSettings
) -> dict[str, Any]:
    """Both demo benchmarks for one arm through the eval runner (``retrofit.evaluate``); returns
    the table metrics. Per-sample JSONL, ``summary.json`` and ``lengths.png`` land in
    ``eval/<arm>/<benchmark>/``; a killed evaluation resumes there, and results of other weights
    (a retrained arm) are replaced."""
    import torch

    from retrofit.adapter import FlexMDM
    from retrofit.evaluation import run_evaluation

    model = FlexMDM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    vocab = json.loads((paths.data / "data_info.json").read_text())["vocab"]
    identity = {"checkpoint": str(checkpoint.resolve()), "kind": model.kind,
                "weights_sha256": _checkpoint_digest(checkpoint)}
    started = time.perf_counter()
    summaries, samples = {}, {}
    for benchmark in BENCHMARKS:
        output = paths.eval / arm / benchmark
        run_file = output / "run.json"
        if run_file.is_file() and json.loads(run_file.read_text()).get("model") != identity:
            shutil.rmtree(output)  # results of other weights: this arm was retrained
        summaries[benchmark] = run_evaluation(
            eval_spec(benchmark, settings.eval_batch_size), output,
            generate_fn=ArmSampler(arm, model, vocab, benchmark, settings),
            data=paths.eval_tasks(benchmark), model_identity=identity,
            settings={"steps": settings.sampling_steps, "temperature": settings.temperature,
                      "seed": settings.seed},
            count_tokens=len, progress=settings.progress,
        )
        samples[benchmark] = _read_jsonl(output / "samples.jsonl")
    unconditional, infill = summaries["unconditional"], summaries["infill"]
    lengths = [record["generated_tokens"] for record in samples["unconditional"]]
    return {
        "arm": arm,
        "checkpoint": str(checkpoint),
        "length_w1": float(unconditional["lengths"]["wasserstein_1"]),
        "length_report": unconditional["lengths"],
        "valid_pct": 100.0 * unconditional["accuracy"],
        "valid_interval_95": [100.0 * bound for bound in unconditional["interval_95"]],
        "infill_ok_pct": 100.0 * infill["accuracy"],
        "infill_ok_interval_95": [100.0 * bound for bound in infill["interval_95"]],
        "infill_middle_length_mean": infill["lengths"]["generated"]["mean"],
        "infill_true_middle_length_mean": infill["lengths"]["reference"]["mean"],
        "num_samples": len(lengths),
        "num_infill": len(samples["infill"]),
        "sampling_seconds": time.perf_counter() - started,
        "lengths": lengths,
        "reference_lengths": [record["reference_tokens"] for record in samples["unconditional"]],
        "results": {benchmark: str(paths.eval / arm / benchmark) for benchmark in BENCHMARKS},
    }


def bayes_check(checkpoint: Path, paths: DemoPaths, settings: DemoSettings) -> dict[str, Any]:
    """Compare the FlexMDM head's total predicted insertions with the Bayes-optimal count.

    Held-out strings are noised with the model's own forward process at fixed times t; for each
    noised row the head's ``sum_j ghat_j`` is compared with ``E[L - l | l, t]`` (the optimum
    when only the length ``l`` of x_t is used) and with the realised ``L - l``.
    """
    import torch

    from retrofit.adapter import FlexMDM
    from retrofit.interpolant import forward_process

    model = FlexMDM.from_pretrained(str(checkpoint), dtype=torch.float32)
    model.eval()
    vocab = json.loads((paths.data / "data_info.json").read_text())["vocab"]
    texts = [record["response"] for record in _read_jsonl(paths.heldout_file)][
        : settings.bayes_rows
    ]
    rows = len(texts)
    width = 1 + max(len(text) for text in texts)
    # Rows as in training: the protected BOS, then the string.
    x1 = torch.full((rows, width), model.pad_token_id, dtype=torch.long)  # (N, L)
    for row, text in enumerate(texts):
        ids = [vocab["<|bos|>"]] + [vocab[c] for c in text]
        x1[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    lengths = torch.tensor([1 + len(text) for text in texts], dtype=torch.long)  # (N,)
    protected = torch.zeros_like(x1, dtype=torch.bool)  # (N, L)
    protected[:, 0] = True
    generator = torch.Generator().manual_seed(settings.seed)
    table = []
    for time_value in (0.1, 0.3, 0.5, 0.7, 0.9):
        t = torch.full((rows,), time_value)
        noised = forward_process(
            x1,
            lengths,
            protected,
            t,
            insertion=model.insertion_schedule,
            unmasking=model.unmasking_schedule,
            mask_token_id=model.mask_token_id,
            pad_token_id=model.pad_token_id,
            generator=generator,
        )
        with torch.inference_mode():
            gaps = model(noised.input_ids, noised.lengths, noised.t).gaps  # (N, L'+1)
        head_total = gaps.sum(dim=1)  # (N,)
        alpha = float(model.insertion_schedule.at(torch.tensor(time_value, dtype=torch.float64)))
        present = noised.lengths - 1  # string tokens present in x_t (BOS excluded)
        bayes = torch.tensor([bayes_expected_missing(int(count), alpha) for count in present])
        realised = (lengths - noised.lengths).float()
        table.append(
            {
                "t": time_value,
                "mean_present": float(present.float().mean()),
                "head_total": float(head_total.mean()),
                "bayes_total": float(bayes.mean()),
                "realised_missing": float(realised.mean()),
                "mean_abs_head_minus_bayes": float((head_total - bayes).abs().mean()),
            }
        )
    return {"rows": rows, "table": table}


def plot_lengths(
    reference: Sequence[int], arms: Mapping[str, Sequence[int]], w1: Mapping[str, float], path: Path
) -> Path:
    """One histogram of string lengths: the data and each arm's samples (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.2, 4.2), dpi=100)
    axes = figure.add_subplot()
    top = max([CANVAS_LENGTH, *reference, *(v for values in arms.values() for v in values)]) + 2
    edges = list(range(0, top + 2, 2))

    def density(values: Sequence[int]) -> list[float]:
        weight = 1.0 / max(len(values), 1)
        return [weight] * len(values)

    axes.hist(
        reference, bins=edges, weights=density(reference), color="0.75", label="data (held-out)"
    )
    colors = {"flexmdm": "tab:blue", "mdm": "tab:red"}
    for arm, values in arms.items():
        axes.hist(
            values,
            bins=edges,
            weights=density(values),
            histtype="step",
            linewidth=2,
            color=colors.get(arm),
            label=f"{ARM_TITLES.get(arm, arm)} (W1 = {w1[arm]:.2f})",
        )
    axes.set_xlabel("string length (tokens)")
    axes.set_ylabel("fraction of strings")
    axes.set_title("Bracket task: generated vs data lengths")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def run_eval(paths: DemoPaths, settings: DemoSettings) -> dict[str, Any]:
    """Evaluate both arms' final checkpoints with the eval runner; writes the PNGs and metrics."""
    from retrofit.evaluation.lengths import plot_length_histograms

    paths.eval.mkdir(parents=True, exist_ok=True)
    for benchmark in BENCHMARKS:
        _require(paths.eval_tasks(benchmark), "data", paths)
    metrics: dict[str, Any] = {}
    for arm in ARMS:
        checkpoint = paths.arm(arm) / "final"
        if not (checkpoint / "retrofit_config.json").is_file():
            raise FileNotFoundError(
                f"{checkpoint} is not a checkpoint: run the finetune stage first "
                f"(retrofit demo --stage finetune --output {paths.root})"
            )
        _log(
            f"evaluating the {ARM_TITLES[arm]} arm with the eval runner ({settings.num_samples} "
            f"samples, {settings.num_infill} infilling tasks) -> {paths.eval / arm}"
        )
        result = evaluate_arm(arm, checkpoint, paths, settings)
        plot_length_histograms(
            result["lengths"],
            result["reference_lengths"],
            paths.eval / f"lengths_{arm}.png",
            title=f"{ARM_TITLES[arm]}: string lengths",
        )
        (paths.eval / f"{arm}_metrics.json").write_text(json.dumps(result, indent=2))
        metrics[arm] = result
    reference = metrics[ARMS[0]]["reference_lengths"]
    plot_lengths(
        reference,
        {arm: metrics[arm]["lengths"] for arm in ARMS},
        {arm: metrics[arm]["length_w1"] for arm in ARMS},
        paths.root / "lengths.png",
    )
    _log("checking the insertion head against the Bayes-optimal E[L - l | l, t]")
    bayes = bayes_check(paths.arm("flexmdm") / "final", paths, settings)
    (paths.eval / "bayes_check.json").write_text(json.dumps(bayes, indent=2))
    return {"arms": metrics, "bayes": bayes, "reference_lengths": reference}


# ---------------------------------------------------------------------------------------------
# Stage 5: report
# ---------------------------------------------------------------------------------------------


def results_table(arms: Mapping[str, Mapping[str, Any]]) -> str:
    """The markdown results table (one row per arm)."""
    lines = [
        "| model | length W1 | valid % | infill ok % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for arm in ARMS:
        if arm not in arms:
            continue
        metrics = arms[arm]
        lines.append(
            f"| {ARM_TITLES[arm]} | {metrics['length_w1']:.2f} | {metrics['valid_pct']:.1f} | "
            f"{metrics['infill_ok_pct']:.1f} |"
        )
    return "\n".join(lines)


def write_report(paths: DemoPaths, settings: DemoSettings, state: Mapping[str, Any]) -> str:
    """Write ``results.md`` and ``results.json``; returns the markdown."""
    evaluation = state["eval"]
    arms = evaluation["arms"]
    pretrain = state["pretrain"]
    finetune = state["finetune"]
    reference = evaluation["reference_lengths"]
    ref_mean = sum(reference) / len(reference)
    root = paths.root
    quick = " --quick" if state.get("quick") else ""
    lines = [
        "# retrofit demo: FlexMDM vs MDM on the bracket task",
        "",
        "Balanced-parenthesis strings with lengths drawn from "
        + ", ".join(f"{k}: {v}" for k, v in LENGTH_DISTRIBUTION.items())
        + f" (mean {ref_mean:.1f}). A tiny LLaDA MDM ({state.get('model_parameters', 0):,} parameters) was "
        f"pretrained ({settings.pretrain_steps} steps) on canvases of BOS + {CANVAS_LENGTH} tokens "
        "padded with EOS, then fine-tuned as a FlexMDM (retrofitted with `adapters/demo-brackets.yaml`: "
        "time conditioning + insertion head, full fine-tuning) and, for the same budget "
        f"({settings.finetune_steps} steps x {settings.finetune_batch_size} sequences, same lr), as "
        "the MDM baseline.",
        "",
        results_table(arms),
        "",
        f"- length W1: Wasserstein-1 distance (in tokens) between the lengths of "
        f"{arms['flexmdm']['num_samples']} unconditional samples and of the {len(reference)} held-out "
        "strings they are paired with (one reference per sample); "
        "mean generated length "
        + ", ".join(
            f"{ARM_TITLES[a]} {arms[a]['length_report']['generated']['mean']:.1f}" for a in ARMS
        )
        + f" vs data {ref_mean:.1f}.",
        (
            f"- Unconditional samples start from BOS alone, at temperature {settings.temperature:g} "
            f"({settings.sampling_steps} steps); the FlexMDM inserts and unmasks, the MDM baseline "
            f"unmasks a {CANVAS_LENGTH}-token canvas in semi-autoregressive blocks of {MDM_BLOCK_LENGTH} "
            "(low-confidence remasking, as `eval/lengths.yaml`)."
        ),
        "- valid %: unconditional samples that are balanced (non-empty); 95% Wilson intervals: "
        + ", ".join(
            f"{ARM_TITLES[a]} {arms[a]['valid_interval_95'][0]:.1f}-{arms[a]['valid_interval_95'][1]:.1f}"
            for a in ARMS
        )
        + ".",
        f"- infill ok %: {arms['flexmdm']['num_infill']} held-out strings of length 16 or 32 with a "
        f"middle of 1-{MAX_MIDDLE} characters removed; the completed string must be balanced. "
        f"Greedy decoding. FlexMDM inserts only between prefix and suffix; the MDM fills a fixed "
        f"canvas of {MAX_MIDDLE} masks between them (EOS padding after the suffix, as in its "
        "training) and its EOS are dropped. Mean middle length: "
        + ", ".join(f"{ARM_TITLES[a]} {arms[a]['infill_middle_length_mean']:.1f}" for a in ARMS)
        + f", true {arms['flexmdm']['infill_true_middle_length_mean']:.1f}.",
        (
            "- MDM baseline lengths: the generated canvas with every EOS dropped (LLaDA decodes with "
            "`skip_special_tokens`)."
        ),
        "",
        "![lengths](lengths.png)",
        "",
        (
            "Per-arm histograms: [eval/lengths_flexmdm.png](eval/lengths_flexmdm.png), "
            "[eval/lengths_mdm.png](eval/lengths_mdm.png). Both arms ran through the eval runner "
            "(`retrofit.evaluation.run_evaluation`, `task: jsonl` specs scored by "
            "`retrofit.demo:check_brackets`): per-sample `samples.jsonl`, `summary.json` (metric, "
            "95% interval, length statistics) and `lengths.png` in `eval/<arm>/unconditional/` and "
            "`eval/<arm>/infill/`."
        ),
        "",
        "## Insertion head vs the Bayes-optimal count",
        "",
        (
            "Held-out strings noised at time t; mean over rows of the head's total predicted insertions "
            "`sum_j ghat_j`, the Bayes-optimal `E[L - l | l, t]` given only the length l of x_t, and the "
            "realised `L - l`."
        ),
        "",
        "| t | mean l | head sum ghat | Bayes E[L-l given l,t] | realised L-l | mean abs(head - Bayes) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in evaluation["bayes"]["table"]:
        lines.append(
            f"| {row['t']:.1f} | {row['mean_present']:.1f} | {row['head_total']:.2f} | "
            f"{row['bayes_total']:.2f} | {row['realised_missing']:.2f} | "
            f"{row['mean_abs_head_minus_bayes']:.2f} |"
        )
    lines += [
        "",
        "## Checkpoints",
        "",
        f"- pretrained MDM (cache key `{pretrain['cache_key']}`): `{pretrain['final']}`",
        f"- FlexMDM arm: `{finetune['flexmdm']['final']}`",
        f"- MDM baseline arm: `{finetune['mdm']['final']}`",
        "",
        (
            "Load either with `retrofit.adapter.FlexMDM.from_pretrained(path)`; the tokenizer is saved "
            "next to the weights."
        ),
        "",
        "## Run each stage alone",
        "",
        "```bash",
        f"retrofit demo --stage data --output {root}{quick}      # strings, infilling tasks, tokenizer",
        pretrain["command"],
        finetune["flexmdm"]["command"],
        finetune["mdm"]["command"],
        f"retrofit demo --stage eval --output {root}{quick}      # samples, metrics, PNGs, this file",
        "```",
        "",
        "Timings (seconds): "
        + ", ".join(f"{k} {v:.0f}" for k, v in state["timings"].items())
        + ".",
        "",
    ]
    markdown = "\n".join(lines)
    (root / "results.md").write_text(markdown)
    summary = {
        "settings": asdict(settings),
        "table": {
            arm: {
                "length_w1": arms[arm]["length_w1"],
                "valid_pct": arms[arm]["valid_pct"],
                "infill_ok_pct": arms[arm]["infill_ok_pct"],
                "mean_length": arms[arm]["length_report"]["generated"]["mean"],
            }
            for arm in ARMS
        },
        "reference_mean_length": ref_mean,
        "bayes": evaluation["bayes"],
        "pretrain": pretrain,
        "finetune": finetune,
        "timings": state["timings"],
        "model_parameters": state.get("model_parameters"),
    }
    (root / "results.json").write_text(json.dumps(summary, indent=2))
    return markdown


# ---------------------------------------------------------------------------------------------
# Orchestration and command line
# ---------------------------------------------------------------------------------------------


def _count_parameters(base_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(base_dir).glob("*.safetensors")):
        if file.name.startswith("flexmdm_"):
            continue
        with safe_open(str(file), framework="pt") as handle:
            names = list(handle.keys())  # a safetensors handle is not iterable itself
            for key in names:
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def run_demo(
    output: str | os.PathLike[str] = "demo_output",
    settings: DemoSettings | None = None,
    *,
    stage: str = "all",
    force: bool = False,
    quick: bool = False,
) -> dict[str, Any]:
    """Run the demo (or one stage of it) into ``output``; returns the results (see results.json).

    Stages after ``data`` need the earlier ones' outputs in ``output`` (the pretrain stage reuses
    a cached MDM with the same settings unless ``force``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    settings = settings or (DemoSettings.quick() if quick else DemoSettings.full())
    paths = DemoPaths(Path(output))
    paths.root.mkdir(parents=True, exist_ok=True)
    state_file = paths.root / "demo_state.json"
    state: dict[str, Any] = (
        json.loads(state_file.read_text()) if state_file.is_file() and stage != "all" else {}
    )
    state["quick"] = quick
    timings: dict[str, float] = dict(state.get("timings", {}))

    def save_state() -> None:
        state["timings"] = timings
        state_file.write_text(json.dumps(state, indent=2, default=str))

    started = time.perf_counter()
    if stage in ("all", "data"):
        _log(
            f"writing {settings.num_train} training strings, the infilling tasks and the tokenizer -> {paths.data}"
        )
        state["data"] = write_data(paths, settings)
        timings["data"] = time.perf_counter() - started
        save_state()
    if stage in ("all", "pretrain"):
        _require(paths.train_file, "data", paths)
        begin = time.perf_counter()
        state["pretrain"] = run_pretrain(paths, settings, force=force)
        state["model_parameters"] = _count_parameters(Path(state["pretrain"]["final"]))
        timings["pretrain"] = time.perf_counter() - begin
        save_state()
    if stage in ("all", "finetune"):
        _require(paths.train_file, "data", paths)
        state.setdefault("pretrain", pretrain_plan(paths, settings))
        _require(Path(state["pretrain"]["final"]) / "config.json", "pretrain", paths)
        begin = time.perf_counter()
        state["finetune"] = run_finetune(paths, settings, Path(state["pretrain"]["final"]))
        timings["finetune"] = time.perf_counter() - begin
        save_state()
    if stage in ("all", "eval"):
        _require(paths.train_file, "data", paths)
        # Stages run alone (or by hand with `retrofit train`) are found from the settings.
        if "pretrain" not in state:
            state["pretrain"] = pretrain_plan(paths, settings)
        if "finetune" not in state:
            state["finetune"] = finetune_plan(paths, settings, Path(state["pretrain"]["final"]))
        if "model_parameters" not in state and Path(state["pretrain"]["final"]).is_dir():
            state["model_parameters"] = _count_parameters(Path(state["pretrain"]["final"]))
        begin = time.perf_counter()
        evaluation = run_eval(paths, settings)
        timings["eval"] = time.perf_counter() - begin
        if stage == "all":
            timings["total"] = time.perf_counter() - started
        state["eval"] = evaluation
        state["timings"] = timings
        markdown = write_report(paths, settings, state)
        state.pop("eval")
        state["table"] = results_table(evaluation["arms"])
        save_state()
        print()
        print(results_table(evaluation["arms"]))
        print()
        bayes = evaluation["bayes"]["table"]
        print(
            "insertion head sum_j ghat_j vs Bayes E[L - l | l, t]: "
            + ", ".join(
                f"t={row['t']:.1f}: {row['head_total']:.1f} vs {row['bayes_total']:.1f}"
                for row in bayes
            )
        )
        print(f"\nreport: {paths.root / 'results.md'}   histogram: {paths.root / 'lengths.png'}")
        return {"markdown": markdown, **evaluation}
    return state


def _require(path: Path, stage: str, paths: DemoPaths) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `retrofit demo --stage {stage} --output {paths.root}` first"
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``retrofit demo``."""
    parser = argparse.ArgumentParser(
        prog="retrofit demo",
        description="CPU demo: pretrain a tiny LLaDA MDM on bracket strings, retrofit it into a "
        "FlexMDM, fine-tune it and an MDM baseline for the same budget, compare length fidelity, "
        "validity and infilling.",
    )
    parser.add_argument(
        "--output", default="demo_output", help="output directory (default: demo_output)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, training and sampling"
    )
    parser.add_argument(
        "--quick", action="store_true", help="test-size run (tiny model, few steps)"
    )
    parser.add_argument(
        "--force", action="store_true", help="retrain the pretrained MDM even if cached"
    )
    parser.add_argument("--stage", default="all", choices=STAGES, help="run only one stage")
    return parser


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``retrofit demo [--output DIR] [--seed N] [--quick] [--force] [--stage S]``; exit code."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    # The demo owns its process: keep the console to the trainer's progress and the demo's lines.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    from retrofit.config import ConfigError

    settings = DemoSettings.quick(args.seed) if args.quick else DemoSettings.full(args.seed)
    try:
        run_demo(args.output, settings, stage=args.stage, force=args.force, quick=args.quick)
    except (FileNotFoundError, ConfigError) as error:
        print(f"retrofit demo: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli_main())
