"""Tokenization with Hugging Face `tokenizers` (Rust, batch API): truncation, no padding.

The packaged all-MiniLM-L6-v2 ``tokenizer.json`` pads every input to 128 tokens; padding
is switched off here because the runtime pads each batch only to its longest row.
A long text is cut on the model's side, as transformers reads it (``truncation_side`` of
tokenizer_config.json, else tokenizer.json's truncation direction, else the right: the text's
start is kept); a call may name the other side (the server's ``truncation_direction``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .errors import ValidationError

SIDES = ("right", "left")  # transformers' truncation_side: "right" keeps a long text's start, "left" its end

# The encoder's warning for posts cut at max_length or max_chunks (args: how many, of how many, what
# cut them); postemb_rt.fidelity drops it for the posts of its own check.
TRUNCATED_WARNING = "%d of %d texts were longer than %s and were truncated"


@dataclass
class Tokenized:
    ids: list[list[int]]  # one list of token ids per text, [CLS] ... [SEP]
    truncated: list[int]  # indices of texts cut to max_length

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


class PostTokenizer:
    """Wraps a ``tokenizers.Tokenizer``: texts -> ragged token-id lists of at most max_length."""

    def __init__(self, path: Path, max_length: int, lowercase: bool = False):
        from tokenizers import Tokenizer

        if max_length < 2:
            raise ValidationError(f"`max_length` must be >= 2 (room for [CLS] and [SEP]). Given: {max_length}.")
        self.max_length = max_length
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - tokenizers raises a bare Exception naming no file
            raise ValidationError(f"`{path}` (tokenizer) cannot be read: {exc}. It is damaged or was not written "
                                  "whole. Fix: restore the file (copy the model again).") from None
        self._tok.no_padding()
        if lowercase:
            _add_lowercase(self._tok)
        self._variants: dict[tuple, object] = {}  # truncation settings -> a copy of the tokenizer (_variant)
        self._config = _read_config(Path(path).parent / "tokenizer_config.json")
        self._side = _truncation_side(self._config, self._tok.truncation, Path(path).parent / "tokenizer_config.json")
        self._tok.enable_truncation(max_length)
        self.pad_id = _pad_id(self._tok, self._config)
        self.specials = self._tok.num_special_tokens_to_add(False)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)  # token ids are 0..vocab_size - 1

    @functools.cached_property
    def model_input_names(self) -> list[str]:
        """What a Hugging Face tokenizer of this model returns (its ``model_input_names``): tokenizer_config.json's
        own list, else its ``tokenizer_class``'s (BERT's: with token_type_ids; MPNet's, RoBERTa's, a generic fast
        tokenizer's: without), else BERT's."""
        names = self._config.get("model_input_names")
        if not names and isinstance(self._config.get("tokenizer_class"), str):
            try:  # a class this transformers lacks, or one whose extra (sentencepiece) is missing: BERT's
                import transformers

                names = getattr(getattr(transformers, self._config["tokenizer_class"]), "model_input_names", None)
            except (AttributeError, ImportError):
                names = None
        return list(names or ("input_ids", "token_type_ids", "attention_mask"))

    @property
    def truncation_side(self) -> str:
        """transformers' name: "right" (a long text keeps its start) or "left" (its end), the side ``__call__``
        cuts by default: tokenizer_config.json's ``truncation_side``, else tokenizer.json's direction, else right.
        Read-only: it is part of the model (and of its folder's model version)."""
        return self._side

    @truncation_side.setter
    def truncation_side(self, value) -> None:
        if value != self._side:
            raise ValidationError(
                f"`tokenizer.truncation_side` is the model's ({self._side!r}, read from its tokenizer files at "
                f"load) and is not set on a loaded Encoder. Given: {value!r}. Fix: write \"truncation_side\": "
                f"{value!r} in the folder's tokenizer_config.json and load it again (a new model version), or on the "
                "server send truncation_direction with the request.")

    def _cutter(self, side: str | None):
        """The tokenizer cutting on ``side`` (None: the model's ``truncation_side``)."""
        side = self._side if side is None else side.lower() if isinstance(side, str) else side
        if side not in SIDES:
            raise ValidationError(f"`side` must be one of {SIDES} (or None: the model's, {self._side!r}). "
                                  f"Given: {side!r}.")
        return self._tok if side == "right" else self._variant(direction=side)

    def _variant(self, **truncation):
        """A copy of the tokenizer truncating at max_length with ``truncation`` (``enable_truncation``'s other
        arguments; none: not truncating), made on first use: truncation settings are per object, not per call."""
        key = tuple(sorted(truncation.items()))
        tok = self._variants.get(key)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._tok.to_str())
            if truncation:
                tok.enable_truncation(self.max_length, **truncation)
            else:
                tok.no_truncation()
            self._variants[key] = tok
        return tok

    def __call__(self, texts: list[str], truncate: bool = True, prompt: str | None = None,
                 side: str | None = None) -> Tokenized:
        """texts: list of str (already validated; ``prompt``: the prompt they start with, named in the error).
        A text longer than max_length keeps its first max_length tokens, or with ``side`` "left" its last ones
        ([CLS] and [SEP] kept); ``side`` None: the model's ``truncation_side``.
        Raises ValidationError for an over-long text when ``truncate`` is False."""
        encs = _encode_batch(self._cutter(side), texts)
        truncated = [i for i, e in enumerate(encs) if e.overflowing]
        if truncated and not truncate:
            i, with_prompt = truncated[0], f" with its prompt {prompt!r}" if prompt else ""
            raise ValidationError(
                f"`texts[{i}]`{with_prompt} is longer than max_length ({self.max_length} tokens) and truncate=False. "
                f"{len(truncated)} text(s) are too long. Fix: shorten them"
                f"{', encode without the prompt,' if prompt else ''} or pass truncate=True."
            )
        return Tokenized([e.ids for e in encs], truncated)

    # -- what code written for sentence-transformers reads from ``model.tokenizer`` (a Hugging Face tokenizer) --
    @property
    def model_max_length(self) -> int:
        """Hugging Face's name for ``max_length``: tokens the model reads, special tokens included."""
        return self.max_length

    def tokenize(self, text: str) -> list[str]:
        """Hugging Face's ``tokenize``: ``text``'s tokens, without special tokens, not truncated."""
        return self._one(text, "tokenize").tokens

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Hugging Face's ``encode``: ``text``'s token ids (with [CLS] ... [SEP] unless
        ``add_special_tokens`` is False), cut to max_length as the model reads them (on its ``truncation_side``)."""
        return self._one(text, "encode", add_special_tokens).ids

    def _one(self, text: str, call: str, add_special_tokens: bool = False):
        if not isinstance(text, str):
            raise ValidationError(f"`text` of tokenizer.{call} must be a str. Given: {type(text).__name__}. "
                                  "Fix: pass one text (encode / __call__ on the Encoder take lists).")
        if call == "tokenize":  # the whole text, as Hugging Face's tokenize does
            return _encode_batch(self._variant(), [text], "text", add_special_tokens=False)[0]
        return _encode_batch(self._cutter(None), [text], "text", add_special_tokens=add_special_tokens)[0]

    def encodings(self, texts: list[str], add_special_tokens: bool = True) -> list:
        """Each text's ``tokenizers.Encoding`` (ids, tokens, character offsets, special-token mask) of the
        whole text, not cut to max_length (the server's /tokenize, as text-embeddings-inference's: a client
        counts the tokens to learn whether a post will be cut)."""
        return _encode_batch(self._variant(), texts, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[list[int]], skip_special_tokens: bool = True) -> list[str]:
        """Token-id lists back to text (the server's /decode); ids past the vocabulary raise ValidationError."""
        size = self.vocab_size
        for i, row in enumerate(ids):
            bad = next((x for x in row if not 0 <= x < size), None)
            if bad is not None:
                raise ValidationError(f"`ids[{i}]` holds {bad}, not a token id of this tokenizer (0..{size - 1}).")
        return self._tok.decode_batch(ids, skip_special_tokens=skip_special_tokens)

    def windows(self, texts: list[str], overlap: int) -> list[list[list[int]]]:
        """Each text's windows of at most max_length tokens, special tokens included, consecutive
        windows sharing ``overlap`` content tokens (the tokenizer's overflow with a stride). A text
        that fits yields one window, the same ids as ``__call__``."""
        encs = _encode_batch(self._variant(stride=overlap), texts)
        return [[e.ids] + [o.ids for o in e.overflowing] for e in encs]


def _encode_batch(tok, texts: list[str], name: str = "texts", **kwargs) -> list:
    """``tok.encode_batch(texts, **kwargs)``. A str holding a lone surrogate (half of a UTF-16 pair:
    what ``json.loads('"\\ud800"')`` or bytes decoded with ``errors="surrogateescape"`` give) is not
    Unicode text and the tokenizer refuses it with a TypeError naming neither the text nor a fix:
    raised as ValidationError naming ``name[i]`` (``text`` for one text) and the code point."""
    try:
        return tok.encode_batch(texts, **kwargs)
    except TypeError:
        for i, text in enumerate(texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                where = name if name == "text" else f"{name}[{i}]"
                raise ValidationError(
                    f"`{where}` holds a lone surrogate (U+{ord(text[exc.start]):04X}, half of a UTF-16 pair): not "
                    "Unicode text, so it cannot be tokenized. Fix: replace it, e.g. text.encode('utf-8', "
                    "'replace').decode() (it becomes '?'), or decode the source as UTF-8 without "
                    "errors='surrogateescape'.") from None
        raise


def _add_lowercase(tok) -> None:
    """Put a Lowercase normaliser before the tokenizer's own, as sentence-transformers does for
    ``do_lower_case`` (unless one is already there)."""
    from tokenizers import normalizers

    current = tok.normalizer
    if isinstance(current, normalizers.Lowercase) or (
            isinstance(current, normalizers.Sequence) and any(isinstance(n, normalizers.Lowercase) for n in current)):
        return
    rest = list(current) if isinstance(current, normalizers.Sequence) else [current] if current is not None else []
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), *rest])


def _truncation_side(config: dict, in_json: dict | None, path: Path) -> str:
    """The side transformers cuts a long text on: tokenizer_config.json's ``truncation_side`` (``config``, read
    from ``path``), else the truncation tokenizer.json holds (``in_json``: ``Tokenizer.truncation``), else right.
    A value transformers refuses is a ValidationError naming the file."""
    side = config.get("truncation_side")
    if side is None:
        return str((in_json or {}).get("direction", "right")).lower()
    if side not in SIDES:  # transformers raises too ("Truncation side should be selected between ...")
        raise ValidationError(f"`{path}` has truncation_side {side!r}; it must be one of {SIDES} (as transformers "
                              "requires). Fix: write \"right\" (keep a long post's start) or \"left\" (its end).")
    return side


def _read_config(path: Path) -> dict:
    """A tokenizer_config.json as a dict: {} when it is absent, not JSON or not an object (defaults then apply)."""
    import json

    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _pad_id(tok, config: dict) -> int:
    """The pad token's id: tokenizer_config.json's ``pad_token`` when present, else [PAD] or <pad>, else 0."""
    names = ["[PAD]", "<pad>"]
    pad = config.get("pad_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    if isinstance(pad, str):
        names.insert(0, pad)
    for name in names:
        i = tok.token_to_id(name)
        if i is not None:
            return i
    return 0
