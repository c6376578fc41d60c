"""lm-evaluation-harness model ``retrofit``: any retrofit checkpoint (FlexMDM or MDM baseline).

Importing this module registers the model name ``retrofit`` with lm-eval's registry. Two routes::

    retrofit lm-eval --model runs/gsm8k/final --tasks gsm8k --batch_size 8 --limit 50
    python -m retrofit.lm_eval --model retrofit --model_args pretrained=runs/gsm8k/final --tasks gsm8k

(``retrofit lm-eval`` takes every option of ``lm-eval run``; ``--model`` is the checkpoint and
``--model_args`` adds settings. The plain ``lm_eval`` console script cannot load the model: lm-eval
0.4 has no plugin entry points, so ``retrofit`` must be imported first, which both routes do.)
Under ``accelerate launch`` each process evaluates its share of the requests, as lm-eval's HF model.

Requests, by the checkpoint's kind:

- ``generate_until``: the checkpoint's sampler through :class:`retrofit.pipeline.Pipeline`.
  FlexMDM: ``max_gen_toks`` caps the answer (the sampler's ``max_length`` is the prompt's length
  plus it), the model chooses the length under the cap. MDM baseline: ``max_gen_toks`` is its
  canvas (``gen_length``), as LLaDA's harness. The request's ``until`` strings cut the answer;
  ``temperature`` / ``do_sample`` / ``top_p`` / sampler keywords in the request's generation kwargs
  are honoured, other sampler settings come from ``model_args`` (``steps=64,confidence=top_prob``).
- ``loglikelihood``: :mod:`retrofit.likelihood` (FlexMDM: the variational bound; MDM: LLaDA's
  Monte Carlo estimator), ``mc_num`` samples per request (default 128); ``is_greedy`` is False
  unless ``greedy_check=true`` (then the continuation is generated greedily under the same cap /
  canvas and compared token by token; LLaDA's harness recommends leaving it off too).
- ``loglikelihood_rolling``: the text is cut into lm-eval's rolling windows of at most
  ``max_length`` tokens (default the checkpoint's), each scored as a continuation of the
  ``rolling_context`` tokens before it (default half a window); docs/likelihood.md.
- ``apply_chat_template`` renders the chat in the checkpoint's recorded prompt layout (its chat
  template, or retrofit's plain ``User: ...\\nAssistant: `` format).

``batch_size`` (lm-eval's ``--batch_size``; "auto": 16) is prompts per sampler batch;
``likelihood_batch_size`` (model_args, default 32) is Monte Carlo rows per forward pass of the
likelihoods. Results depend on neither: every request draws its noise from its own stream
(generation: seeded by task, document and request index; likelihood: by context).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from lm_eval import utils as lm_eval_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "retrofit.lm_eval needs lm-evaluation-harness: pip install 'flexmdm-retrofit[lm-eval]' "
        "(lm-eval==0.4.13)"
    ) from error

import torch
from tqdm.auto import tqdm

from retrofit.likelihood import LikelihoodEstimate, flexmdm_log_likelihood, mdm_log_likelihood
from retrofit.pipeline import Answer, Pipeline
from retrofit.prompt_layout import PLAIN_PROMPT_TEMPLATE, encode_text
from retrofit.sampling import flexmdm_generate, mdm_generate

__all__ = ["RetrofitLM", "cli_main"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_GEN_TOKS = 256
# Requests whose Monte Carlo rows are noised and held in memory at once (x mc_num rows).
_LIKELIHOOD_CHUNK_ROWS = 8192
# Settings of RetrofitLM itself; every other model_args key is a sampler setting.
_OWN_ARGS = ("pretrained", "revision", "base_model", "tokenizer", "device", "dtype",
             "batch_size", "max_batch_size", "mc_num", "likelihood_batch_size", "seed",
             "greedy_check", "max_gen_toks", "max_length", "rolling_context",
             "trust_remote_code")  # fmt: skip
DEFAULT_LIKELIHOOD_BATCH_SIZE = 32


# ---------------------------------------------------------------------------------------------
# The checkpoint behind one private adapter: loading, prompt encoding, sampling, likelihood
# ---------------------------------------------------------------------------------------------


class _Checkpoint:
    """What lm-eval needs from a checkpoint, all through :class:`retrofit.pipeline.Pipeline`.

    Raw lm-eval contexts are encoded as the pipeline encodes prompt text (BOS + content); the
    chat rendering follows the checkpoint's recorded layout. Kept in one place so that moving
    these steps into the pipeline is a change here only.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model
        self.tokenizer = pipeline.tokenizer
        self.kind = pipeline.kind
        self.ids = pipeline.special_ids
        self.max_length = int(self.model.config.max_length)

    # -- prompts ------------------------------------------------------------------------------

    @property
    def uses_chat_template(self) -> bool:
        """Whether the recorded layout renders prompts with the tokenizer's chat template."""
        return self.pipeline.layout.uses_chat_template(self.tokenizer)

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool) -> str:
        """The chat as text in the checkpoint's layout (its chat template, else plain turns)."""
        if self.uses_chat_template:
            return self.tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
            )  # fmt: skip
        text = ""
        for index, message in enumerate(messages):
            if message["role"] in ("user", "system"):
                text += PLAIN_PROMPT_TEMPLATE.format(prompt=message["content"])
            else:  # an assistant turn; the last one is continued when no generation prompt
                last = index == len(messages) - 1 and not add_generation_prompt
                text += message["content"] + ("" if last else "\n")
        return text

    def encode(self, text: str, *, markup: bool, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``: BOS (when the tokenizer has one and ``add_bos``) + the text,
        special-token strings parsed only in ``markup`` (a chat rendering), else plain content."""
        ids = encode_text(self.tokenizer, text, parse_special_tokens=markup)
        bos = self.ids.bos
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.pipeline.decode(ids)

    # -- sampling ------------------------------------------------------------------------------

    @functools.cached_property
    def sampler_options(self) -> frozenset[str]:
        """Keyword settings the checkpoint's sampler accepts (what model_args may set)."""
        sampler = mdm_generate if self.kind == "mdm" else flexmdm_generate
        internal = {"model", "prompts", "suffixes", "seed", "row_ids", "progress", "trace"}
        return frozenset(set(inspect.signature(sampler).parameters) - internal)

    def generate(
        self, prompts: list[list[int]], settings: dict[str, Any], stream_ids: list[int], seed: int
    ) -> list[Answer]:
        """Answers of token-id prompts (cut at the first stop id) with the checkpoint's sampler."""
        return self.pipeline.generate_ids(prompts, settings, stream_ids=stream_ids, seed=seed)

    # -- likelihood ----------------------------------------------------------------------------

    def log_likelihood(
        self,
        pairs: Sequence[tuple[list[int], list[int]]],
        *,
        mc_num: int,
        batch_size: int,
        seed: int,
        progress: Callable[[int], None] | None,
    ) -> list[LikelihoodEstimate]:
        """log p(continuation | context) estimates, by the checkpoint's kind."""
        common = {
            "mask_token_id": self.ids.mask, "pad_token_id": self.ids.pad, "mc_num": mc_num,
            "batch_size": batch_size, "seed": seed, "max_length": self.max_length,
            "progress": progress,
        }  # fmt: skip
        with torch.no_grad():
            if self.kind == "mdm":
                return mdm_log_likelihood(self.model, pairs, **common)
            return flexmdm_log_likelihood(
                self.model, pairs, insertion=self.model.insertion_schedule,
                unmasking=self.model.unmasking_schedule, **common,
            )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# The lm-eval model
# ---------------------------------------------------------------------------------------------


def _stable_int(*parts: Any) -> int:
    """A non-negative 63-bit integer from the parts' text (for random-stream ids)."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % 2**63


@register_model("retrofit")
class RetrofitLM(TemplateLM):
    """lm-eval model for retrofit checkpoints (see the module docstring for the request types).

    model_args: ``pretrained`` (checkpoint directory or Hub id; required), ``revision``,
    ``base_model``, ``tokenizer``, ``dtype`` (auto | bfloat16 | float16 | float32), ``device``,
    ``batch_size``, ``mc_num`` (Monte Carlo samples per likelihood, default 128),
    ``likelihood_batch_size`` (Monte Carlo rows per forward pass, default 32), ``seed``,
    ``greedy_check``, ``max_gen_toks`` (default cap / canvas when a task sets none, 256),
    ``max_length`` (rolling window), ``rolling_context``, and any setting of the checkpoint's
    sampler (``steps``, ``confidence``, ``temperature``, ``block_length``, ...).
    """

    def __init__(
        self,
        pretrained: str,
        *,
        revision: str | None = None,
        base_model: str | None = None,
        tokenizer: str | None = None,
        device: str | None = None,
        dtype: str = "auto",
        batch_size: int | str | None = None,
        max_batch_size: int | None = None,
        mc_num: int = 128,
        likelihood_batch_size: int = DEFAULT_LIKELIHOOD_BATCH_SIZE,
        seed: int = 0,
        greedy_check: bool = False,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        max_length: int | None = None,
        rolling_context: int | None = None,
        trust_remote_code: bool | None = None,
        **sampler_settings: Any,
    ) -> None:
        super().__init__()
        self.accelerator = self._accelerator()
        if self.accelerator is not None:
            device = str(self.accelerator.device)
            self._rank = self.accelerator.local_process_index
            self._world_size = self.accelerator.num_processes
        pipeline = Pipeline.from_pretrained(
            pretrained, revision=revision, base_model=base_model, tokenizer=tokenizer,
            device=device, dtype=dtype,
        )  # fmt: skip
        self.checkpoint = _Checkpoint(pipeline)
        self.tokenizer = self.checkpoint.tokenizer
        self._device = self.checkpoint.model.device
        unknown = sorted(set(sampler_settings) - self.checkpoint.sampler_options)
        if unknown:
            raise ValueError(
                f"model_args {unknown} are neither retrofit lm-eval settings {list(_OWN_ARGS)} "
                f"nor settings of the {self.checkpoint.kind} sampler "
                f"{sorted(self.checkpoint.sampler_options)}"
            )
        self.sampler_settings = dict(sampler_settings)
        self.batch_size = (
            DEFAULT_BATCH_SIZE if batch_size in (None, "auto") or str(batch_size).startswith("auto")
            else int(batch_size)
        )  # fmt: skip
        self.mc_num = int(mc_num)
        self.likelihood_batch_size = int(likelihood_batch_size)
        self.seed = int(seed)
        self.greedy_check = bool(greedy_check)
        self.max_gen_toks = int(max_gen_toks)
        window = int(max_length) if max_length is not None else self.checkpoint.max_length
        self.window = min(window, self.checkpoint.max_length)
        self.rolling_context = (
            max(1, (self.window - 1) // 2) if rolling_context is None else int(rolling_context)
        )
        if not 1 <= self.rolling_context < self.window - 1:
            raise ValueError(
                f"rolling_context must be in [1, max_length - 1) = [1, {self.window - 1}), got "
                f"{self.rolling_context}"
            )
        self._chat_applied = False
        self._warned: set[str] = set()

    @staticmethod
    def _accelerator() -> Any:
        """An accelerate Accelerator when launched with several processes, else None."""
        from accelerate import Accelerator

        accelerator = Accelerator()
        return accelerator if accelerator.num_processes > 1 else None

    # -- lm-eval plumbing ------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        eos = self.checkpoint.ids.eos
        return self.checkpoint.ids.pad if eos is None else eos

    @property
    def prefix_token_id(self) -> int:
        """What an empty context conditions on: BOS, else EOS (as lm-eval's HF model)."""
        bos = self.checkpoint.ids.bos
        return self.eot_token_id if bos is None else bos

    @property
    def max_length(self) -> int:
        return self.window

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "retrofit")).replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template apply_chat_template renders with (the layout's), for lm-eval's records."""
        if self.checkpoint.uses_chat_template:
            return self.tokenizer.chat_template
        return PLAIN_PROMPT_TEMPLATE

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The chat rendered in the checkpoint's recorded prompt layout."""
        self._chat_applied = True  # contexts now hold template markup: parse its special tokens
        return self.checkpoint.render_chat(chat_history, add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.checkpoint.encode(
            string, markup=self._chat_applied, add_bos=add_special_tokens is not False
        )

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.checkpoint.decode(tokens)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj: Any, dst: int = 0) -> Any:
        if self.world_size <= 1:
            return [obj]
        result = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            logger.warning(message)

    def _bar(self, total: int, description: str, disable: bool) -> Any:
        return tqdm(total=total, desc=description, disable=disable or self.rank != 0)

    # -- loglikelihood ---------------------------------------------------------------------------

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Drop context tokens from the left so that the pair fits the model's max_length."""
        room = self.checkpoint.max_length - len(continuation)
        if room < 1:
            raise ValueError(
                f"a continuation of {len(continuation)} tokens does not fit the model's "
                f"max_length {self.checkpoint.max_length} with any context; score long texts "
                "with loglikelihood_rolling"
            )
        return context[-room:] if len(context) > room else context, continuation

    def _score(
        self, pairs: list[tuple[list[int], list[int]]], description: str, disable_tqdm: bool
    ) -> list[LikelihoodEstimate]:
        """Likelihood estimates of token pairs, longest first in chunks that bound memory."""
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        chunk = max(1, _LIKELIHOOD_CHUNK_ROWS // self.mc_num)
        estimates: list[LikelihoodEstimate | None] = [None] * len(pairs)
        with self._bar(len(pairs) * self.mc_num, description, disable_tqdm) as bar:
            for start in range(0, len(order), chunk):
                members = order[start : start + chunk]
                results = self.checkpoint.log_likelihood(
                    [pairs[i] for i in members], mc_num=self.mc_num,
                    batch_size=self.likelihood_batch_size,
                    seed=self.seed, progress=bar.update,
                )  # fmt: skip
                for index, estimate in zip(members, results):
                    estimates[index] = estimate
        return estimates  # type: ignore[return-value]

    def _loglikelihood_tokens(
        self, requests: list[tuple[tuple[str, str], list[int], list[int]]], disable_tqdm: bool = False,
        **kwargs: Any,
    ) -> list[tuple[float, bool]]:
        pairs = [self._fit(list(context), list(continuation)) for _, context, continuation in requests]
        estimates = self._score(pairs, "retrofit loglikelihood", disable_tqdm)
        greedy = self._greedy(pairs) if self.greedy_check else [False] * len(pairs)
        results = []
        for (strings, _, _), estimate, is_greedy in zip(requests, estimates, greedy):
            result = (estimate.log_likelihood, bool(is_greedy))
            self.cache_hook.add_partial("loglikelihood", strings, result)
            results.append(result)
        return results

    def _greedy(self, pairs: list[tuple[list[int], list[int]]]) -> list[bool]:
        """Whether greedy generation under the continuation's length (FlexMDM cap / MDM canvas)
        reproduces the continuation exactly."""
        flags = []
        for index, (context, continuation) in enumerate(pairs):
            if not continuation:
                flags.append(True)
                continue
            settings = self._settings({"temperature": 0.0}, len(context), len(continuation))
            answer = self.checkpoint.generate([context], settings, [index], self.seed)[0]
            flags.append(answer.token_ids == continuation)
        return flags

    # -- loglikelihood_rolling -------------------------------------------------------------------

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows: list[tuple[list[int], list[int]]] = []
        owners: list[int] = []
        for index, request in enumerate(requests):
            (text,) = request.args
            tokens = self.tok_encode(text, add_special_tokens=False)
            for window in lm_eval_utils.get_rolling_token_windows(
                token_list=tokens, prefix_token=self.prefix_token_id,
                max_seq_len=self.window - 1, context_len=self.rolling_context,
            ):  # fmt: skip
                windows.append(lm_eval_utils.make_disjoint_window(window))
                owners.append(index)
        estimates = self._score(windows, "retrofit loglikelihood_rolling", disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, estimate in zip(owners, estimates):
            totals[owner] += estimate.log_likelihood
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # -- generate_until --------------------------------------------------------------------------

    def _settings(self, gen_kwargs: Mapping[str, Any], prompt_length: int, max_gen_toks: int) -> dict[str, Any]:
        """Sampler settings of one request: model_args, then the request's kwargs; the cap
        (FlexMDM ``max_length``) or canvas (MDM ``gen_length``) from ``max_gen_toks``."""
        settings = dict(self.sampler_settings)
        for key, value in gen_kwargs.items():
            if key == "do_sample":
                continue
            if key in self.checkpoint.sampler_options and key not in ("max_length", "gen_length"):
                settings[key] = value
            else:
                self._warn_once(f"retrofit lm-eval: generation kwarg {key!r} is not used by the "
                                f"{self.checkpoint.kind} sampler; ignored")  # fmt: skip
        if gen_kwargs.get("do_sample") is False:
            settings["temperature"] = 0.0
        if self.checkpoint.kind == "mdm":
            settings["gen_length"] = max_gen_toks
            block = settings.get("block_length")
            if block is not None and max_gen_toks % int(block):
                self._warn_once(f"retrofit lm-eval: block_length {block} does not divide the canvas "
                                f"{max_gen_toks}; sampling it as one block")  # fmt: skip
                settings["block_length"] = None
            blocks = max_gen_toks // int(settings.get("block_length") or max_gen_toks)
            steps = int(settings.get("steps") or max_gen_toks)
            settings["steps"] = -(-steps // blocks) * blocks  # a multiple of the blocks
        else:
            settings["max_length"] = min(prompt_length + max_gen_toks, self.checkpoint.max_length)
        return settings

    def _fit_prompt(self, prompt: list[int], max_gen_toks: int) -> list[int]:
        """Drop prompt tokens from the left to leave room for ``max_gen_toks`` (as lm-eval's HF)."""
        room = self.checkpoint.max_length - max_gen_toks
        if room < 1:
            raise ValueError(
                f"max_gen_toks {max_gen_toks} leaves no room for a prompt within the model's "
                f"max_length {self.checkpoint.max_length}; lower max_gen_toks"
            )
        return prompt[-room:] if len(prompt) > room else prompt

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        jobs = []  # (index, prompt ids, settings, until, stream id)
        seen: dict[tuple, int] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen_toks = int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks))
            prompt = self._fit_prompt(self.tok_encode(context), max_gen_toks)
            settings = self._settings(gen_kwargs, len(prompt), max_gen_toks)
            key = (request.task_name, request.doc_id, request.idx)
            seen[key] = seen.get(key, -1) + 1  # repeats of one request get their own streams
            stream = _stable_int(*key, seen[key], context)
            jobs.append((index, prompt, settings, until, stream))
        # Batch requests with identical settings (FlexMDM: the cap includes the prompt length).
        groups: dict[str, list[tuple]] = {}
        for job in sorted(jobs, key=lambda job: -len(job[1])):
            groups.setdefault(repr(sorted(job[2].items())), []).append(job)
        outputs: list[str] = [""] * len(requests)
        with self._bar(len(requests), "retrofit generate_until", disable_tqdm) as bar:
            for group in groups.values():
                for start in range(0, len(group), self.batch_size):
                    batch = group[start : start + self.batch_size]
                    answers = self.checkpoint.generate(
                        [job[1] for job in batch], batch[0][2], [job[4] for job in batch], self.seed
                    )
                    for (index, _, _, until, _), answer in zip(batch, answers):
                        text = answer.text
                        for stop in until:
                            if stop:
                                text = text.split(stop)[0]
                        outputs[index] = text
                        self.cache_hook.add_partial("generate_until", requests[index].args, text)
                    bar.update(len(batch))
        return outputs


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _run_lm_eval(argv: list[str]) -> int:
    """Run lm-eval's own command line on ``argv`` (the ``retrofit`` model registered)."""
    from lm_eval.__main__ import cli_evaluate

    saved = sys.argv
    sys.argv = ["lm-eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``retrofit lm-eval --model CHECKPOINT [--model_args k=v,...] [lm-eval run options]``.

    Every option but ``--model`` / ``--model_args`` goes to ``lm-eval run`` unchanged (``--tasks``,
    ``--include_path``, ``--num_fewshot``, ``--limit``, ``--batch_size``, ``--output_path``,
    ``--log_samples``, ``--apply_chat_template``, ``--gen_kwargs``, ...).
    """
    import argparse

    parser = argparse.ArgumentParser(
        prog="retrofit lm-eval",
        description="Evaluate a retrofit checkpoint with lm-evaluation-harness (its model "
        "'retrofit').",
        epilog="Every other option goes to `lm-eval run` (see `lm-eval run --help`): --tasks, "
        "--include_path, --num_fewshot, --limit, --batch_size, --output_path, --log_samples, "
        "--apply_chat_template, --gen_kwargs, ...",
    )  # fmt: skip
    parser.add_argument("--model", required=True, help="checkpoint directory or Hub id")
    parser.add_argument("--model_args", "--model-args", default="",
                        help="more model settings, key=value,... (mc_num, steps, dtype, ...)")
    arguments, rest = parser.parse_known_args(list(argv or []))
    if any(arg.split("=")[0] in ("--model", "--model_args", "-a") for arg in rest):
        raise ValueError("retrofit lm-eval: give --model and --model_args once")
    model_args = ",".join(part for part in (f"pretrained={arguments.model}", arguments.model_args)
                          if part)  # fmt: skip
    return _run_lm_eval(["run", "--model", "retrofit", "--model_args", model_args, *rest])


def main() -> None:
    """``python -m retrofit.lm_eval ...``: lm-eval's command line with ``retrofit`` registered."""
    argv = sys.argv[1:]
    if argv and argv[0] not in ("run", "ls", "validate", "-h", "--help"):
        argv = ["run", *argv]
    raise SystemExit(_run_lm_eval(argv))


if __name__ == "__main__":
    main()
