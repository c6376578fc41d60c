"""Data pipelines: datasets -> token ids -> batches with explicit lengths and protected prompts.

Three kinds of data (``DataConfig.kind``), all read with Hugging Face ``datasets`` (Hub ids by
default, local json/jsonl/parquet/text/csv files as an option, map-style or streaming) and
tokenised with the model's own tokenizer:

``pretrain``  (stage 1, web text; default Hub id ``Skylion007/openwebtext``)
    Each document is tokenised, EOS is appended and the ids are cut into rows of at most
    ``max_length`` tokens. Default (``pack=False``): **one document per row with its true
    length** -- FlexMDM learns lengths, so a row never mixes documents and is never padded inside
    its content; a long document yields several rows and its last, shorter row keeps its true
    length (``long_documents="truncate"`` keeps only the first row instead). ``pack=True``
    concatenates documents (EOS-separated) into full ``max_length`` rows, MDM pretraining style;
    the last row of an epoch keeps its true length. Nothing is protected.

``sft`` / ``gsm8k``  (stage 2, instruction tuning; GSM8K default Hub id ``openai/gsm8k``/``main``)
    A prompt and a response. The prompt goes through the tokenizer's chat template when it has one
    (LLaDA-8B-Instruct does), else the plain format ``"User: {prompt}\\nAssistant: "`` (after BOS
    when the tokenizer has one). Row = prompt ids + response ids (+ EOS); the prompt ids are
    ``protected`` (never noised, never part of the loss). ``gsm8k`` builds the prompt with
    ``format_gsm8k_prompt(question)`` (zero-shot step-by-step reasoning, ``\\boxed{}`` answer) and
    the target with ``format_gsm8k_target(answer)`` from ``retrofit.prompts`` so that
    training and evaluation share one template. ``sft`` reads ``prompt``/``response`` columns or
    a chat ``messages`` column (set ``fields={"messages": "messages"}``).

``infill``  (stage 2, code infilling; default ``OpenCoder-LLM/opc-sft-stage2``/``educational_instruct``)
    From an instruction/output pair, a random middle span of the output is chosen (seeded per
    record from a hash of its content, the seed and the epoch, so both arms of a comparison, every
    rank and every resumed run see the same span; ``infill_span="lines"`` cuts at line boundaries,
    ``"chars"`` anywhere). Two layouts, picked by ``objective``:

    - ``"flexmdm"``: ``prompt(instruction) + prefix + START + middle + END + suffix (+ EOS)``,
      everything but the middle protected: the model grows the middle between the markers.
    - ``"mdm"`` (the LLaDA baseline, PSM style): the prompt is the instruction followed by
      ``<prefix>{prefix}</prefix><suffix>{suffix}</suffix>`` (``psm_template``), and the middle
      (+ EOS) is the response.

    Markers (``infill_markers``) are plain strings. Decision: by default they are encoded as
    ordinary text (usually several tokens): they are protected, so they are never generated, and
    their embeddings are already trained -- LoRA does not train the embedding matrix, so a new
    special token would keep an untrained embedding. A marker that is already a single token in
    the vocabulary stays one token. ``add_marker_tokens=True`` adds missing markers to the
    tokenizer as special tokens (in place; the model's embedding must have room for the new ids).

Special tokens: record text is *content* and is encoded with special-token strings as plain text
(``encode_text``), so a literal ``"<|mdm_mask|>"`` or ``"<|endoftext|>"`` in a document, response
or infill prefix/middle/suffix never becomes the mask or EOS id. Special tokens are parsed only in
markup: a chat-template rendering of the prompt, the infill markers, ``response_suffix`` and the
literal text of ``PLAIN_PROMPT_TEMPLATE`` / ``psm_template``. A chat rendering embeds the user's
text, so a mask-token string there would still become the mask id: such records are skipped
(``mask_token_in_prompt``), and no row ever holds the mask id as a clean token
(``mask_token_in_content`` for a mask token the tokenizer does not mark as special).

Bad records are handled by ``on_bad_record`` (``skip`` | ``truncate`` | ``error``) and counted in
``DataStats`` (``stream.stats.summary()``):

- missing field / wrong type / empty text: skipped (``error``: raise);
- the mask id among the clean tokens (``mask_token_in_prompt`` / ``mask_token_in_content``):
  skipped (``error``: raise);
- prompt that leaves no room for a response within ``max_length``: always skipped (``error``: raise);
- too long: ``truncate`` cuts the response (sft/gsm8k; the EOS may be cut too) or the suffix
  (infill; in the MDM PSM prompt the suffix is shortened by characters, never inside a
  multi-byte character) and counts it in ``truncated``; ``skip`` skips it; ``error`` raises.
  Pretraining documents are chunked, never "too long".

A stream warns once (``warnings.warn``) when more than half of the first 1,000+ records it read
were skipped, which usually means wrong ``fields`` or a too small ``max_length``.

Positions: ``build_dataset`` returns an ``ExampleStream`` that loops over epochs (reshuffled with
``seed + epoch``) and exposes ``state_dict()``/``load_state_dict()``: a resumed run continues with
exactly the next example. ``BatchIterator`` groups examples into ``Batch`` es through a
``Collator``, optionally sorting by length within a window of batches (dynamic-length batches),
and is resumable the same way. Each data-parallel rank has its own stream and its own state (save
one state per rank). Iterate in the training process itself (not in ``DataLoader`` workers, whose
copies of the position would be lost); tokenisation costs ~1 ms per record on one core.

Typical use in a training loop::

    ids = resolve_special_ids(tokenizer, model.config)
    stream = build_dataset(cfg.data, tokenizer, rank=rank, world_size=world_size, eos_token_id=ids.eos)
    collator = Collator(ids.pad, eos_token_id=ids.eos, objective="flexmdm", max_length=cfg.data.max_length)
    batches = BatchIterator(stream, collator, micro_batch_size, bucket_batches=8, seed=cfg.data.seed)
    for batch in batches:          # Batch(input_ids (B, L), lengths (B,), protected, response_mask)
        batch = batch.to(device)

Examples are dicts: ``input_ids: list[int]``, ``protected: list[bool]`` (same length),
``length: int``, ``prompt_length: int`` and, for infill, ``middle_start``/``middle_end`` (token
positions of the middle, ``input_ids[middle_start:middle_end]``).
"""

from retrofit.data.batching import Batch, BatchIterator, Collator
from retrofit.data.config import DEFAULT_FIELDS, DEFAULT_HUB_DATASETS, KINDS, DataConfig
from retrofit.data.examples import (
    BadRecordError,
    DataStats,
    ExampleStream,
    build_dataset,
    choose_infill_span,
)
from retrofit.data.sources import load_records
from retrofit.prompt_layout import (
    DEFAULT_INFILL_MARKERS,
    DEFAULT_PSM_TEMPLATE,
    PLAIN_PROMPT_TEMPLATE,
    PromptLayout,
    build_infill_example,
    encode_generation_inputs,
    encode_infill_prompt,
    encode_prompt,
    encode_text,
    resolve_mask_token_id,
)

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_HUB_DATASETS",
    "DEFAULT_INFILL_MARKERS",
    "DEFAULT_PSM_TEMPLATE",
    "KINDS",
    "PLAIN_PROMPT_TEMPLATE",
    "BadRecordError",
    "Batch",
    "BatchIterator",
    "Collator",
    "DataConfig",
    "DataStats",
    "ExampleStream",
    "PromptLayout",
    "build_dataset",
    "build_infill_example",
    "choose_infill_span",
    "encode_generation_inputs",
    "encode_infill_prompt",
    "encode_prompt",
    "encode_text",
    "load_records",
    "resolve_mask_token_id",
]
