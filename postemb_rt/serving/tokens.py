"""A request's inputs as the token-id rows the model reads: texts cut to max_input_chars (``fit_chars``) and
the checks of their tokenization (``check_cut``), and
text-embeddings-inference's token-id inputs (``POST /embed`` takes ``inputs`` as token ids, e.g. ``/tokenize``'s:
``check_vocab``, ``fit_ids``). ``runtime`` calls these; errors are ``ApiError``.

Token ids, as TEI treats them (its router's ``tokenization.rs``, ``EncodingInput::Ids``):

- no prompt applies (no ``prompt_name``, and the model has no default prompt): the ids are the
  model's input as given, special tokens **not** added (send ``/tokenize``'s ids, which carry
  [CLS] ... [SEP]); an input longer than max_length is cut to max_length ids with truncation
  (its first, or with ``truncation_direction: left`` its last: the cut drops a trailing [SEP]
  or a leading [CLS], as TEI's does), else refused (413). TEI decodes the ids and tokenizes the
  text again, which gives back the same ids for ids a tokenizer produced; here they are used as
  they are. With --long-posts chunk a longer input is refused too: windows need its text.
- a prompt applies: the ids are decoded without their special tokens, the prompt is prepended, and
  the text is tokenized as any text (special tokens added, truncated as asked).

Unlike TEI, which drops ids it does not know, an id past the tokenizer's vocabulary is refused (422).
"""
from __future__ import annotations

from .errors import ApiError


def fit_chars(texts: list[str], item, cut: bool, limit: int, direction: str = "right",
              truncatable: bool = True) -> tuple[list[str], list[int]]:
    """Posts longer than ``limit`` (max_input_chars, which bounds the tokenizer's work): when ``cut`` (the
    request truncates to max_length tokens) each is cut to its first (``direction`` "left": last) ``limit``
    characters, as text-embeddings-inference does, far past the tokens the model reads; else 413 naming
    ``item(i)``, whose fix offers ``truncate: true`` only to a route that takes it (``truncatable``; not
    /tokenize). Returns (texts, indices cut)."""
    long = [i for i, t in enumerate(texts) if len(t) > limit]
    if long and not cut:
        name = item(long[0])
        send = (", or send truncate: true (a long post's first max_length tokens are embedded; with long_posts "
                "chunk, at most max_input_chars characters are)") if truncatable else " or split it"
        raise ApiError(413, f"`{name}` is {len(texts[long[0]])} characters, more than max_input_chars ({limit}). "
                            f"Fix: shorten it{send} (client), or start the server with a higher --max-input-chars "
                            "(operator).",
                       param=name, code="max_input_chars", limit=limit, given=len(texts[long[0]]))
    if not long:
        return texts, []
    left = direction.lower() == "left"
    return [t[-limit:] if left and len(t) > limit else t[:limit] for t in texts], long


def check_cut(tok, cut: list[int], item, truncate: bool, max_length: int, limit: int, direction: str) -> None:
    """Texts tokenized (``tok``: ``Tokenized``) after ``fit_chars`` cut those at indices ``cut`` to ``limit``
    characters: 422 for a text longer than ``max_length`` tokens when not ``truncate``; 413 for a text cut where
    the model still reads (its kept ``limit`` characters hold at most max_length tokens: the vector would not
    be the whole post's). Errors name ``item(i)``."""
    if tok.truncated and not truncate:
        name = item(tok.truncated[0])
        raise ApiError(422, f"`{name}` is longer than max_length ({max_length} tokens) and truncate is false; "
                            f"{len(tok.truncated)} input(s) are too long. Fix: shorten them or send truncate: true.",
                       param=name, code="max_length", limit=max_length, given=f">{max_length}")
    short = sorted(set(cut) - set(tok.truncated))
    if short:
        name, side = item(short[0]), "last" if direction.lower() == "left" else "first"
        raise ApiError(413, f"`{name}` is more than max_input_chars ({limit}) characters, and its {side} {limit} "
                            f"hold at most max_length ({max_length}) tokens, so cutting it there would change its "
                            "vector. Fix: shorten it, or raise the server's --max-input-chars.",
                       param=name, code="max_input_chars", limit=limit, given=f">{limit}")


def cut_side(enc, direction: str | None) -> str:
    """A request's ``truncation_direction`` ("right" or "left", any case) in lower case; None: the side the
    model ``enc`` cuts on (its tokenizer's ``truncation_side``, as ``Encoder.encode``)."""
    return (direction or enc.tokenizer.truncation_side).lower()


def check_vocab(tokenizer, rows: list[list[int]], item) -> None:
    """422 naming ``item(j)`` for the first row holding an id past ``tokenizer``'s vocabulary (ids >= 0
    are the schema's check). Reads each row once in C (``max``)."""
    size = tokenizer.vocab_size
    for j, row in enumerate(rows):
        if max(row) >= size:
            bad = next(x for x in row if x >= size)
            raise ApiError(422, f"`{item(j)}` holds {bad}, not a token id of this model's tokenizer (0..{size - 1}). "
                                "Fix: send the ids /tokenize gives, or the text.", param=item(j),
                           code="invalid_value", limit=size - 1, given=bad)


def fit_ids(rows: list[list[int]], item, max_length: int, truncate: bool, direction: str,
            chunk: bool = False) -> tuple[list[list[int]], list[int]]:
    """Token-id inputs without a prompt -> (rows of at most ``max_length`` ids, indices cut), as TEI:
    no special tokens added; a longer row is cut to its first (``direction`` "left": last) max_length
    ids when ``truncate``, else 413 naming ``item(j)``. ``chunk`` (the server's --long-posts chunk, which
    embeds a long post's windows and needs its text for them): a longer row is a 413 too. The rows are
    the request's own lists (a cut one is a new list)."""
    long = [j for j, row in enumerate(rows) if len(row) > max_length]
    if long and (chunk or not truncate):
        name, n = item(long[0]), len(rows[long[0]])
        why = ("this server embeds long posts in windows (--long-posts chunk), which needs their text" if chunk
               else "truncate is false")
        raise ApiError(422, f"`{name}` holds {n} token ids, more than max_length ({max_length}), and {why}. Fix: "
                            f"send at most {max_length} ids{'' if chunk else ' or truncate: true'}, or the text.",
                       param=name, code="max_length", limit=max_length, given=n)
    if not long:
        return rows, []
    left = direction.lower() == "left"
    return [(row[-max_length:] if left else row[:max_length]) if len(row) > max_length else row
            for row in rows], long
