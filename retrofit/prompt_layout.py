"""Prompt layout: how a prompt or an infilling task becomes token ids, for training AND inference.

One owner for the layout the model sees (BOS, chat wrapper or the plain ``User:/Assistant:``
format, infill boundary markers, the MDM baseline's PSM prompt, response suffix, EOS). The data
pipeline (``retrofit.data``) builds training rows with :func:`build_infill_example` /
:func:`encode_prompt`; the inference pipeline encodes prompts with
:func:`encode_generation_inputs`, which calls the same functions with an empty middle, so the
protected part of an evaluation prompt is token-for-token the one training produced.
:class:`PromptLayout` is the recorded part of the training data config (``retrofit_config.json``'s
``prompt_layout``).
"""
from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from retrofit.special_ids import find_mask_token_id

DEFAULT_INFILL_MARKERS: tuple[str, str] = ("<|fim_middle_start|>", "<|fim_middle_end|>")
DEFAULT_PSM_TEMPLATE = "{instruction}\n<prefix>{prefix}</prefix><suffix>{suffix}</suffix>"
PLAIN_PROMPT_TEMPLATE = "User: {prompt}\nAssistant: "
CHAT_TEMPLATE_MODES = ("auto", "always", "never")


def check_layout_fields(
    chat_template: Any,
    infill_markers: Any,
    response_suffix: Any,
    psm_template: Any,
    *,
    where: str = "data",
) -> tuple[str, str]:
    """Validate the prompt-layout fields (of a data config or a recorded layout); returns the
    markers as a tuple. Errors name the option as ``{where}.{field}``."""
    if chat_template not in CHAT_TEMPLATE_MODES:
        raise ValueError(
            f"{where}.chat_template must be one of {list(CHAT_TEMPLATE_MODES)}, got {chat_template!r}"
        )
    if isinstance(infill_markers, list):
        infill_markers = tuple(infill_markers)
    if (
        not isinstance(infill_markers, tuple)
        or len(infill_markers) != 2
        or not all(isinstance(marker, str) for marker in infill_markers)
    ):
        raise TypeError(
            f"{where}.infill_markers must be two strings [start, end] (\"\" for no marker), got "
            f"{infill_markers!r}"
        )
    if not isinstance(response_suffix, str):
        raise TypeError(f"{where}.response_suffix must be a string, got {response_suffix!r}")
    if not isinstance(psm_template, str):
        raise TypeError(f"{where}.psm_template must be a string, got {psm_template!r}")
    for placeholder in ("{instruction}", "{prefix}", "{suffix}"):
        if placeholder not in psm_template:
            raise ValueError(f"{where}.psm_template must contain {placeholder}")
    return infill_markers

# --------------------------------------------------------------------------------------------
# Prompt layout: how training laid out prompts, recorded in checkpoints for sampling / evaluation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLayout:
    """The part of a ``DataConfig`` that decides how a prompt (and an infilling task) is laid out.

    The trainer records it in the checkpoint (``retrofit_config.json``'s ``prompt_layout``), so
    ``retrofit generate`` and ``retrofit eval`` encode prompts exactly as the model saw them in
    training. ``append_eos`` is resolved (``DataConfig.resolved_append_eos``).
    """

    chat_template: str = "auto"
    append_eos: bool = False
    response_suffix: str = ""
    infill_markers: tuple[str, str] = DEFAULT_INFILL_MARKERS
    psm_template: str = DEFAULT_PSM_TEMPLATE

    def __post_init__(self) -> None:
        markers = check_layout_fields(
            self.chat_template, self.infill_markers, self.response_suffix, self.psm_template,
            where="prompt_layout",
        )
        object.__setattr__(self, "infill_markers", markers)
        if not isinstance(self.append_eos, bool):
            raise TypeError(f"prompt_layout.append_eos must be true or false, got {self.append_eos!r}")

    @classmethod
    def from_data_config(cls, cfg: Any) -> PromptLayout:
        """The layout a ``DataConfig`` trains with (its ``objective`` decides ``append_eos``)."""
        return cls(
            chat_template=cfg.chat_template,
            append_eos=cfg.resolved_append_eos,
            response_suffix=cfg.response_suffix,
            infill_markers=tuple(cfg.infill_markers),
            psm_template=cfg.psm_template,
        )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, **overrides: Any) -> PromptLayout:
        """From a checkpoint record (None: the defaults); ``overrides`` that are not None win."""
        values = dict(values or {})
        known = {item.name for item in dataclass_fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"prompt_layout has unknown keys {unknown}; known: {sorted(known)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)

    def uses_chat_template(self, tokenizer: Any) -> bool:
        """Whether prompts in this layout go through ``tokenizer``'s chat template."""
        return _use_chat_template(tokenizer, self.chat_template)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (markers as a list)."""
        return {
            "chat_template": self.chat_template,
            "append_eos": self.append_eos,
            "response_suffix": self.response_suffix,
            "infill_markers": list(self.infill_markers),
            "psm_template": self.psm_template,
        }


# --------------------------------------------------------------------------------------------
# Tokenisation helpers (shared with sampling / evaluation)
# --------------------------------------------------------------------------------------------


# A piece of text to encode: (text, is_template). Template text may contain special-token strings
# that are meant as special tokens (chat/infill markup); content text never does (see encode_text).
_Piece = tuple[str, bool]


def encode_text(tokenizer: Any, text: str, *, parse_special_tokens: bool = False) -> list[int]:
    """Token ids of `text` without any special tokens added (BOS/EOS are added explicitly).

    By default `text` is *content* (a document, a response, an infill prefix/middle/suffix, a
    user prompt): special-token strings inside it are encoded as ordinary text
    (``split_special_tokens=True``), so a literal ``"<|mdm_mask|>"`` or ``"<|endoftext|>"`` in a
    web page never becomes the mask or EOS id. ``parse_special_tokens=True`` is for *markup*
    written by this project or its config (a chat-template rendering, infill markers,
    ``response_suffix``), where such strings are meant as the special tokens.

    Added tokens that are not special (``tokenizer.add_tokens(..., special_tokens=False)``) are
    always matched: the tokenizer treats them as ordinary vocabulary.
    """
    if not text:
        return []
    try:
        encoded = tokenizer(
            text,
            add_special_tokens=False,
            split_special_tokens=not parse_special_tokens,
            verbose=False,
        )
    except Exception as error:  # e.g. a word-level vocabulary without an unknown token
        raise ValueError(
            f"the tokenizer cannot encode {text[:60]!r} ({type(error).__name__}: {error})"
        ) from error
    return list(encoded["input_ids"])


def _special_token_pattern(tokenizer: Any) -> re.Pattern[str] | None:
    """A regex matching the tokenizer's special added tokens (longest first), or None."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    special = {str(token) for token in decoder.values() if getattr(token, "special", False)}
    tokens = sorted((token for token in special if token), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


def _encode_pieces(tokenizer: Any, pieces: Sequence[_Piece]) -> list[int]:
    """Encode concatenated pieces: special tokens are parsed in template pieces only.

    The text is cut at the special-token strings of the template pieces (each becomes its id) and
    every stretch between them -- template and content text together -- is encoded as content.
    The tokenizer itself cuts its input at special tokens before the sub-word model runs, so the
    ids equal ``encode_text(..., parse_special_tokens=True)`` of the joined text whenever the
    content holds no special-token string (special tokens with ``lstrip``/``rstrip`` set aside).
    """
    pattern = _special_token_pattern(tokenizer)
    ids: list[int] = []
    stretch: list[str] = []
    for text, is_template in pieces:
        if not is_template or pattern is None:
            stretch.append(text)
            continue
        position = 0
        for match in pattern.finditer(text):
            stretch.append(text[position : match.start()])
            ids += encode_text(tokenizer, "".join(stretch))
            ids.append(int(tokenizer.convert_tokens_to_ids(match.group())))
            stretch = []
            position = match.end()
        stretch.append(text[position:])
    return ids + encode_text(tokenizer, "".join(stretch))


def _format_pieces(template: str, **values: str | Sequence[_Piece]) -> list[_Piece]:
    """``template.format(**values)`` as pieces: literal template text vs the inserted values.

    A string value is content; a value that is already a list of pieces is inserted as is.
    """
    pieces: list[_Piece] = []
    for literal, field_name, format_spec, conversion in string.Formatter().parse(template):
        if literal:
            pieces.append((literal, True))
        if field_name is None:
            continue
        if field_name not in values:
            raise ValueError(
                f"template {template!r} has an unknown placeholder {{{field_name}}}; known: "
                + ", ".join(f"{{{key}}}" for key in values)
            )
        value = values[field_name]
        if isinstance(value, str):
            spec = f"!{conversion}" if conversion else ""
            spec += f":{format_spec}" if format_spec else ""
            pieces.append((("{0" + spec + "}").format(value), False))
        else:
            pieces.extend(value)
    return pieces


def resolve_mask_token_id(tokenizer: Any, mask_token_id: int | None = None) -> int | None:
    """The mask id a prompt or a training row must never contain as a clean token:
    ``mask_token_id`` (a checkpoint's recorded id) when given, else the tokenizer's by the one
    resolution order of :func:`retrofit.special_ids.find_mask_token_id`; None when none is known
    (then nothing is checked)."""
    return find_mask_token_id(tokenizer, None, mask_token_id)


def _use_chat_template(tokenizer: Any, mode: str | bool | None) -> bool:
    """Whether prompts go through the tokenizer's chat template ("auto": when it has one)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode in ("auto", None):
        return has_template
    if mode in ("always", True):
        if not has_template:
            raise ValueError(
                "data.chat_template='always' but the tokenizer has no chat template; use 'auto' "
                "or 'never', or set tokenizer.chat_template"
            )
        return True
    return False


def _plain_prompt_ids(
    tokenizer: Any, messages: Sequence[tuple[str, Sequence[_Piece]]]
) -> list[int]:
    """BOS + ``PLAIN_PROMPT_TEMPLATE`` per user/system message, assistant contents + newline."""
    if messages and messages[-1][0] != "user":
        raise ValueError("the last prompt message must be a user message")
    pieces: list[_Piece] = []
    for role, content in messages:
        if role in ("user", "system"):
            pieces += _format_pieces(PLAIN_PROMPT_TEMPLATE, prompt=content)
        else:
            pieces += [*content, ("\n", True)]
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    return bos + _encode_pieces(tokenizer, pieces)


def encode_prompt(
    tokenizer: Any,
    prompt: str | Sequence[Mapping[str, str]],
    *,
    chat_template: str | bool | None = "auto",
    answer_prefix: str = "",
) -> list[int]:
    """Token ids of a user prompt, ready for the answer to follow (generation prompt included).

    With a chat template: ``apply_chat_template(messages, add_generation_prompt=True)`` (the
    template adds BOS itself), encoded with special tokens parsed -- the template's own markup
    needs it, and the user content embedded in the rendering is parsed too, so a mask-token string
    in a prompt becomes the mask id: training skips such records (``mask_token_in_prompt``) and
    ``encode_generation_inputs`` refuses them. Without: BOS (if the tokenizer has one) +
    ``PLAIN_PROMPT_TEMPLATE.format(prompt=...)``, the contents encoded as plain text. Used by the
    SFT pipelines and by samplers / evaluators that must prompt exactly as in training.

    Args:
        tokenizer: the model's tokenizer.
        prompt: the user text, or a list of chat messages ({"role", "content"}).
        chat_template: "auto" | "always" | "never" (or True/False/None).
        answer_prefix: text that opens the answer as part of the prompt (content, protected in
            training; e.g. the research GSM8K template's ``<reasoning>``).
    """
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if _use_chat_template(tokenizer, chat_template):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = encode_text(tokenizer, text, parse_special_tokens=True)
    else:
        ids = _plain_prompt_ids(
            tokenizer, [(message["role"], [(message["content"], False)]) for message in messages]
        )
    return ids + encode_text(tokenizer, answer_prefix)


def make_example(ids: list[int], protected: list[bool], prompt_length: int) -> dict[str, Any]:
    """An example dict: ids, their protection flags, length and prompt length."""
    return {
        "input_ids": ids,
        "protected": protected,
        "length": len(ids),
        "prompt_length": prompt_length,
    }


def _psm_example(
    tokenizer: Any, instruction: str, prefix: str, middle: str, suffix: str, *, psm_template: str,
    chat_template: str | bool | None, response_suffix: str, eos: list[int],
) -> dict[str, Any]:
    """The MDM baseline's infilling example: the PSM prompt (protected) + middle (+ response
    suffix) (+ EOS) as the response (see :func:`build_infill_example`)."""
    pieces = _format_pieces(psm_template, instruction=instruction, prefix=prefix, suffix=suffix)
    if _use_chat_template(tokenizer, chat_template):
        text = "".join(text for text, _ in pieces)
        prompt_ids = encode_prompt(tokenizer, text, chat_template=chat_template)
    else:
        prompt_ids = _plain_prompt_ids(tokenizer, [("user", pieces)])
    middle_ids = encode_text(tokenizer, middle)
    response = middle_ids + encode_text(tokenizer, response_suffix, parse_special_tokens=True)
    response += eos
    example = make_example(
        prompt_ids + response,
        [True] * len(prompt_ids) + [False] * len(response),
        len(prompt_ids),
    )
    example["middle_start"] = len(prompt_ids)
    example["middle_end"] = len(prompt_ids) + len(middle_ids)
    return example


def build_infill_example(
    tokenizer: Any,
    instruction: str,
    prefix: str,
    middle: str,
    suffix: str,
    *,
    objective: str = "flexmdm",
    markers: Sequence[str] = DEFAULT_INFILL_MARKERS,
    psm_template: str = DEFAULT_PSM_TEMPLATE,
    chat_template: str | bool | None = "auto",
    eos_token_id: int | None = None,
    response_suffix: str = "",
) -> dict[str, Any]:
    """Token layout of one infilling example (training, or evaluation with ``middle=""``).

    flexmdm: ``prompt(instruction) + prefix + START + middle + END + suffix (+ EOS)``; everything
        but the middle is protected. ``middle_start``/``middle_end`` give the middle's token span;
        with an empty middle they coincide at the slot where a sampler inserts.
    mdm (PSM): ``prompt(psm_template(instruction, prefix, suffix)) + middle (+ response_suffix)
        (+ EOS)``; the prompt is protected and the middle is the response
        (``middle_start = prompt_length``).

    Pieces are tokenised separately and concatenated, so the decoded middle is exactly `middle`.
    `prefix`, `middle` and `suffix` are content: special-token strings in them are plain text
    (``encode_text``). Markers and `response_suffix` are markup: encoded with special tokens
    parsed, so a marker is a single token when it is one of the tokenizer (see
    ``retrofit.tokenization.add_special_tokens``) and several ordinary tokens otherwise. The PSM
    prompt follows ``encode_prompt``: with a chat template the whole rendering is parsed (the
    training pipeline then skips a prompt holding the mask id); without one only the
    ``psm_template``'s own text is parsed.

    Returns:
        An example dict: input_ids, protected, length, prompt_length, middle_start, middle_end.
    """
    if objective not in ("flexmdm", "mdm"):
        raise ValueError(f"objective must be 'flexmdm' or 'mdm', got {objective!r}")
    eos = [eos_token_id] if eos_token_id is not None else []
    if objective == "mdm":
        return _psm_example(tokenizer, instruction, prefix, middle, suffix, psm_template=psm_template,
                            chat_template=chat_template, response_suffix=response_suffix, eos=eos)
    start_marker, end_marker = markers
    # The same wrapper with or without an instruction (an empty user turn when there is none,
    # e.g. HumanEval infilling), as for the MDM's PSM prompt: training rows whose instruction was
    # dropped (data.empty_instruction_rate) teach exactly the layout such an evaluation uses.
    prompt_ids = encode_prompt(tokenizer, instruction, chat_template=chat_template)
    left = (
        prompt_ids
        + encode_text(tokenizer, prefix)
        + encode_text(tokenizer, start_marker, parse_special_tokens=True)
    )
    middle_ids = encode_text(tokenizer, middle)
    right = (
        encode_text(tokenizer, end_marker, parse_special_tokens=True)
        + encode_text(tokenizer, suffix)
        + encode_text(tokenizer, response_suffix, parse_special_tokens=True)
        + eos
    )
    example = make_example(
        left + middle_ids + right,
        [True] * len(left) + [False] * len(middle_ids) + [True] * len(right),
        len(prompt_ids),
    )
    example["middle_start"] = len(left)
    example["middle_end"] = len(left) + len(middle_ids)
    return example


def encode_infill_prompt(
    tokenizer: Any,
    instruction: str,
    prefix: str,
    suffix: str,
    *,
    objective: str = "flexmdm",
    layout: PromptLayout | None = None,
    eos_token_id: int | None = None,
) -> tuple[list[int], list[int]]:
    """Sampler inputs for infilling in exactly the training layout of :func:`build_infill_example`.

    ``layout``: the checkpoint's :class:`PromptLayout` (default: the training defaults);
    ``eos_token_id`` is appended after the suffix only when ``layout.append_eos`` (training did).
    Returns ``(left, right)`` token ids: for ``flexmdm`` the sampler inserts the middle between them
    (``right`` = END marker + suffix (+ response suffix) (+ EOS)); for ``mdm`` ``left`` is the PSM
    prompt the baseline generates after, and ``right`` is empty.
    """
    layout = layout or PromptLayout()
    example = build_infill_example(
        tokenizer, instruction, prefix, "", suffix, objective=objective,
        markers=layout.infill_markers, psm_template=layout.psm_template,
        chat_template=layout.chat_template,
        eos_token_id=eos_token_id if layout.append_eos else None,
        response_suffix=layout.response_suffix,
    )
    ids, cut = example["input_ids"], example["middle_start"]
    return ids[:cut], (ids[cut:] if objective == "flexmdm" else [])


def encode_generation_inputs(
    tokenizer: Any,
    tasks: Sequence[tuple[str | None, str | None, str | None]],
    *,
    objective: str,
    layout: PromptLayout | None = None,
    eos_token_id: int | None = None,
    mask_token_id: int | None = None,
    answer_prefixes: Sequence[str] | None = None,
) -> tuple[list[list[int]], list[list[int]] | None]:
    """Sampler inputs for a list of ``(prompt, prefix, suffix)`` tasks in the training layout.

    Plain tasks (``prefix is None``): ``encode_prompt(prompt)`` (+ the task's entry of
    ``answer_prefixes``, text that opens the answer as in training), no suffixes. Infilling tasks
    (``prefix`` and ``suffix`` given, ``prompt`` an optional instruction): :func:`encode_infill_prompt`;
    the suffixes are returned for the FlexMDM sampler (None for the MDM baseline, which generates
    after the PSM prompt). All tasks of one call must be of one kind. Texts are encoded exactly as
    in training: prompts, prefixes and suffixes are content (special-token strings are plain text)
    except inside a chat-template rendering.

    Raises:
        ValueError: a task's ids contain the mask id (``mask_token_id``, default
            :func:`resolve_mask_token_id`), e.g. a literal mask-token string in a chat-templated
            prompt: the sampler would take it for a position to fill (training skips such
            records as ``mask_token_in_prompt``).
    """
    layout = layout or PromptLayout()
    infill = {prefix is not None for _, prefix, _ in tasks}
    if len(infill) > 1:
        raise ValueError("mix of infilling and plain prompts: encode them in separate calls")
    if not infill or not infill.pop():
        prefixes = answer_prefixes or [""] * len(tasks)
        lefts = [encode_prompt(tokenizer, prompt or "", chat_template=layout.chat_template,
                               answer_prefix=answer_prefix)
                 for (prompt, _, _), answer_prefix in zip(tasks, prefixes)]
        rights = None
    else:
        pairs = [
            encode_infill_prompt(tokenizer, prompt or "", prefix, suffix or "",
                                 objective=objective, layout=layout, eos_token_id=eos_token_id)
            for prompt, prefix, suffix in tasks
        ]
        lefts = [left for left, _ in pairs]
        rights = None if objective == "mdm" else [right for _, right in pairs]
    mask = resolve_mask_token_id(tokenizer, mask_token_id)
    if mask is not None:
        for index, left in enumerate(lefts):
            if mask in left or (rights is not None and mask in rights[index]):
                raise ValueError(
                    f"task {index} encodes to the mask token id {mask}: its prompt holds the mask "
                    f"token string {tokenizer.convert_ids_to_tokens(mask)!r}, which the chat "
                    "template renders as the mask token (or the layout's infill_markers / "
                    "response_suffix do); remove it"
                )
    return lefts, rights

