"""The rest of sentence-transformers' ``SentenceTransformer`` API on ``Encoder``, so code written
for it runs unchanged: ``similarity`` / ``similarity_pairwise`` with ``similarity_fn_name``,
``get_sentence_embedding_dimension``, ``truncate_embeddings`` (with ``from_pretrained(truncate_dim=)``),
``max_seq_length``, ``encode_query`` / ``encode_document``.
(``encode``'s own keyword arguments are in ``encode_options``.) Each method has
sentence-transformers' meaning and return type (torch tensors for scores).
"""
from __future__ import annotations

from contextlib import contextmanager

from .errors import ValidationError
from .st_folder import SIMILARITY_FNS


def _matrix(x, name: str):
    """Embeddings as sentence-transformers' ``similarity`` takes them (a 1-D or 2-D numpy array or
    torch tensor, or a list of 1-D ones) -> float32 2-D torch tensor."""
    import numpy as np
    import torch

    if isinstance(x, (list, tuple)):
        if not x:
            raise ValidationError(f"`{name}` is an empty list; pass at least one embedding.")
        x = torch.stack([torch.as_tensor(np.asarray(v) if not isinstance(v, torch.Tensor) else v) for v in x])
    elif not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() == 1:
        x = x.unsqueeze(0)
    if x.dim() != 2 or not (x.dtype.is_floating_point or x.dtype in (torch.int8, torch.uint8)):
        raise ValidationError(f"`{name}` must be embeddings, (n, dim) or (dim,), of numbers. Given: shape "
                              f"{tuple(x.shape)}, dtype {x.dtype}.")
    return x.float()


class SentenceTransformerAPI:
    """A base of ``Encoder`` (which provides ``model``, ``dim``, ``max_length``, ``_set_max_length``,
    ``encode`` and its batchers)."""

    _similarity_fn_name: str | None = None

    @property
    def similarity_fn_name(self) -> str:
        """"cosine" (the default), "dot", "euclidean" or "manhattan": what ``similarity`` computes. A
        sentence-transformers folder's own ``similarity_fn_name`` is read at load; settable."""
        return self._similarity_fn_name or self.model.config.similarity_fn_name or "cosine"

    @similarity_fn_name.setter
    def similarity_fn_name(self, value) -> None:
        value = getattr(value, "value", value)  # sentence-transformers' SimilarityFunction enum
        if value is not None and value not in SIMILARITY_FNS:
            raise ValidationError(f"`similarity_fn_name` must be one of {SIMILARITY_FNS} (or None: the model's). "
                                  f"Given: {value!r}.")
        self._similarity_fn_name = value

    def similarity(self, embeddings1, embeddings2):
        """(n1, n2) torch float32 tensor of scores between every row of ``embeddings1`` and every row
        of ``embeddings2`` (numpy arrays, torch tensors, or lists of 1-D ones; a 1-D input is one
        row): cosine, dot product, or negative euclidean / manhattan distance, as
        ``similarity_fn_name`` says. Higher is more similar, as in sentence-transformers."""
        import torch

        a, b, fn = self._operands(embeddings1, embeddings2)
        if fn in ("cosine", "dot"):
            return a @ b.T
        return -torch.cdist(a, b, p=2.0 if fn == "euclidean" else 1.0)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """(n,) torch float32 tensor: the score of ``embeddings1[i]`` with ``embeddings2[i]`` (as
        ``similarity``, row by row; both hold n rows)."""
        a, b, fn = self._operands(embeddings1, embeddings2)
        if a.shape[0] != b.shape[0]:
            raise ValidationError(f"`embeddings1` and `embeddings2` must hold as many rows for pairwise scores. "
                                  f"Given: {a.shape[0]} and {b.shape[0]}. Fix: pair them up, or use similarity().")
        if fn in ("cosine", "dot"):
            return (a * b).sum(dim=1)
        return -(a - b).norm(p=2.0 if fn == "euclidean" else 1.0, dim=1)

    def _operands(self, embeddings1, embeddings2):
        """(a, b, similarity_fn_name): both inputs as float32 2-D tensors of one dim, rows normalised
        for cosine (which is then a dot product)."""
        import torch

        a, b = _matrix(embeddings1, "embeddings1"), _matrix(embeddings2, "embeddings2")
        if a.shape[1] != b.shape[1]:
            raise ValidationError(f"`embeddings1` and `embeddings2` must have one dim. Given: {a.shape[1]} and "
                                  f"{b.shape[1]}. Fix: encode both with the same model and truncate_dim.")
        fn = self.similarity_fn_name
        if fn == "cosine":
            a, b = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
        return a, b, fn

    def get_sentence_embedding_dimension(self) -> int:
        """The output dim, as sentence-transformers names it: ``truncate_dim`` when one is set, else ``dim``."""
        return self.truncate_dim or self.dim

    get_embedding_dimension = get_sentence_embedding_dimension

    @contextmanager
    def truncate_embeddings(self, truncate_dim: int | None):
        """sentence-transformers' context manager: inside it, ``encode`` and ``submit`` return the
        ``truncate_dim`` prefix (None: the full dim) and ``vector_version`` says so."""
        from .encode_options import check_truncate_dim

        before, self.truncate_dim = self.truncate_dim, check_truncate_dim(self, truncate_dim)
        try:
            yield self
        finally:
            self.truncate_dim = before

    def _prefix(self, vectors):
        """``submit``'s full vectors (n, dim) or (dim,) -> their ``truncate_dim`` prefix, normalised
        again when the model normalises (what ``encode`` returns at that prefix)."""
        import numpy as np

        from .encode_options import truncate

        rows = truncate(np.atleast_2d(vectors), self.truncate_dim, self.model.config.normalize)
        return rows[0] if vectors.ndim == 1 else rows

    @property
    def max_seq_length(self) -> int:
        """sentence-transformers' name for ``max_length``: tokens per post, special tokens included.
        Settable, from 2 to the model's own, before the first ``submit``/``aencode``; a shorter one
        is part of the vectors' version (``+max<n>``)."""
        return self.max_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        own = self.model.config.max_length
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= own:
            raise ValidationError(f"`max_seq_length` must be an int from 2 to the model's max_length ({own}). "
                                  f"Given: {value!r}.")
        if value > self.max_batch_tokens:
            raise ValidationError(f"`max_seq_length` must be <= max_batch_tokens ({self.max_batch_tokens}). "
                                  f"Given: {value}. Fix: Encoder.from_pretrained(..., max_batch_tokens=N).")
        if self._batcher is not None or self._raw_batcher is not None:
            raise ValidationError("`max_seq_length` cannot change once submit()/aencode() started the batcher. "
                                  f"Fix: Encoder.from_pretrained(..., max_length={value}).")
        self._set_max_length(value, None)  # as at load: the tokenizer, and the default chunk overlap

    def encode_query(self, texts, **kwargs):
        """sentence-transformers' ``encode_query``: ``encode`` with the model's "query" prompt ("" if it
        has none, which also skips the default prompt) unless ``prompt`` / ``prompt_name`` is given."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "query"
        return self.encode(texts, **kwargs)

    def encode_document(self, texts, **kwargs):
        """sentence-transformers' ``encode_document``: as ``encode_query`` with the "document" prompt."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            kwargs["prompt_name"] = "document"
        return self.encode(texts, **kwargs)
