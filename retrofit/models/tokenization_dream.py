"""Dream's tokenizer without remote code.

Dream checkpoints name ``tokenizer_class: DreamTokenizer`` with an ``auto_map`` to remote code
(``tokenization_dream.py``); that class is Qwen2's byte-level BPE tokenizer (same pre-tokenizer,
``vocab.json`` + ``merges.txt``, ``<|endoftext|>`` as unk/eos/pad, no BOS) under another name, with
Dream's added tokens (``<|mask|>`` = 151666, ...) read from ``tokenizer_config.json``. Registering
this subclass under the same name lets ``AutoTokenizer.from_pretrained`` load Dream tokenizers
without ``trust_remote_code``, as :class:`~retrofit.models.DreamModel` does for the model.
"""

from __future__ import annotations

from transformers import Qwen2Tokenizer

__all__ = ["DreamTokenizer"]


class DreamTokenizer(Qwen2Tokenizer):
    """Qwen2's tokenizer under the name Dream's ``tokenizer_config.json`` asks for."""
