"""Tokenization with Hugging Face `tokenizers` (Rust, batch API): truncation, no padding.

The packaged all-MiniLM-L6-v2 ``tokenizer.json`` pads every input to 128 tokens; padding
is switched off here because the runtime pads each batch only to its longest row.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError


@dataclass
class Tokenized:
    ids: list[list[int]]  # one list of token ids per text, [CLS] ... [SEP]
    truncated: list[int]  # indices of texts cut to max_length

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


class PostTokenizer:
    """Wraps a ``tokenizers.Tokenizer``: texts -> ragged token-id lists of at most max_length."""

    def __init__(self, path: Path, max_length: int):
        from tokenizers import Tokenizer

        if max_length < 2:
            raise ValidationError(f"`max_length` must be >= 2 (room for [CLS] and [SEP]). Given: {max_length}.")
        self.max_length = max_length
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.enable_truncation(max_length)
        pad = self._tok.token_to_id("[PAD]")
        self.pad_id = 0 if pad is None else pad

    def __call__(self, texts: list[str], truncate: bool = True) -> Tokenized:
        """texts: list of str (already validated). Raises ValidationError for an over-long
        text when ``truncate`` is False."""
        encs = self._tok.encode_batch(texts)
        truncated = [i for i, e in enumerate(encs) if e.overflowing]
        if truncated and not truncate:
            i = truncated[0]
            raise ValidationError(
                f"`texts[{i}]` is longer than max_length ({self.max_length} tokens) and truncate=False. "
                f"{len(truncated)} text(s) are too long. Fix: shorten them or pass truncate=True."
            )
        return Tokenized([e.ids for e in encs], truncated)
