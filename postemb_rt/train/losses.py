"""Every loss term of the recipe, each over the nested prefixes of the embedding (Matryoshka).

sentence-transformers' ``MatryoshkaLoss`` is the reference: the model runs once, each term is
then computed again on the first k components of the embeddings re-normalised, for every k
of ``matryoshka_dims``, and the results are summed with ``matryoshka_weights`` (default 1 each;
a sum, not a mean, as the reference does). ``dims`` below is ``TrainConfig.nested_dims()``:
[(k, weight), ...], descending, the first k the full dimension. With that one entry and weight
1 (``matryoshka_dims`` absent or [projection_dim]) every term is exactly the un-nested one:
:func:`prefix` returns the full rows untouched and :func:`nested` the one term itself.

What each term compares at prefix k (the teacher side is never cut where it is the teacher's
own similarity structure, which every prefix should keep as well as k dimensions allow):

- task loss: the pairs' cosines at k, through the same per-task scale and offset (one
  calibration for every k, as the reference wraps one loss module);
- similarity: the student's in-batch cosines at k against the teacher's (768-d, or the
  frozen base's 384-d in the v2 recipe);
- direct and in-batch negatives: the student's prefix k against the teacher's first k PCA
  coordinates re-normalised, which are exactly the teacher's PCA-k targets (the top k
  principal axes are the first k of the top 50, and re-normalising a slice of a unit row is
  the unit row of the slice). That is the right target because PCA is itself nested: the top
  k axes are the best k-d linear summary of the teacher (Eckart-Young), so asking the first k
  student components for them asks for the best k-d picture, not for a k-d vector to match
  a 50-d one (undefined). The projection's start (least squares onto the 50 coordinates)
  already nests: least squares splits by target column, so its first k rows are the least
  squares onto the first k coordinates;
- pairs: the related pairs' cosines at k against the teacher's (768-d) pair cosines.
"""
from __future__ import annotations

from .distill import _pearson_loss, _similarity_loss


def prefix(x, k: int):
    """The first ``k`` components of the rows of ``x`` (..., D), re-normalised; ``x`` itself
    (no copy, no re-normalising: exactly today's numbers) when k is D."""
    import torch

    return x if k == x.shape[-1] else torch.nn.functional.normalize(x[..., :k], dim=-1)


def nested(term, dims):
    """sum over (k, w) of ``dims`` of w * term(k); term(k) itself for one prefix of weight 1."""
    if len(dims) == 1 and dims[0][1] == 1.0:
        return term(dims[0][0])
    return sum(w * term(k) for k, w in dims)


def task_loss(ea, eb, col, y, scale, offset, pair_w, contrastive: bool, dims):
    """The task loss on a step's pairs. ``ea`` (P, D) anchor rows; ``eb`` (U, D) the distinct b
    texts, ``col`` (P,) each pair's row of ``eb``; ``y`` (P,) float labels; ``scale``/``offset``
    (P,) each pair's calibration (its task's); ``pair_w`` (P,) weights or None. BCE on
    ``scale * cos + offset`` or (``contrastive``) softmax over ``eb``'s rows."""
    import torch

    def at(k):
        a, b = prefix(ea, k), prefix(eb, k)
        if not contrastive:
            return torch.nn.functional.binary_cross_entropy_with_logits(scale * (a * b[col]).sum(-1) + offset, y,
                                                                        weight=pair_w)
        ce = torch.nn.functional.cross_entropy(scale[:, None] * (a @ b.t()), col,
                                               reduction="mean" if pair_w is None else "none")
        return ce if pair_w is None else (pair_w * ce).mean()

    return nested(at, dims)


def similarity_term(es, teacher, dims):
    """1 - Pearson r of the in-batch cosines of ``es`` (n, D) at each prefix against the
    teacher's ``teacher`` (n, T) unit rows (see distill._similarity_loss)."""
    return nested(lambda k: _similarity_loss(prefix(es, k), teacher), dims)


def teacher_targets(t_pca, dims) -> dict:
    """{k: (n, k) unit rows}: the teacher's PCA targets ``t_pca`` (n, D) cut to each prefix,
    i.e. its PCA-k targets (computed once per run, not per step)."""
    return {k: prefix(t_pca, k) for k, _ in dims}


def direct_term(es, targets: dict, idx, dims):
    """mean 1 - cosine of ``es`` (n, D) at each prefix k to ``targets[k][idx]``."""
    return nested(lambda k: (1.0 - (prefix(es, k) * targets[k][idx]).sum(-1)).mean(), dims)


def nce_term(es, targets: dict, idx, temperature: float, dims):
    """In-batch negatives: softmax of ``es`` at each prefix k over the stream's targets
    ``targets[k][idx]``, the post's own target the right class."""
    import torch

    def at(k):
        logits = prefix(es, k) @ targets[k][idx].t() / temperature
        return torch.nn.functional.cross_entropy(logits, torch.arange(len(idx)))

    return nested(at, dims)


def pair_term(e0, e1, want, dims):
    """1 - Pearson r of the related pairs' cosines (``e0``, ``e1`` (P, D) rows) at each prefix
    against the teacher's pair cosines ``want`` (P,)."""
    return nested(lambda k: _pearson_loss((prefix(e0, k) * prefix(e1, k)).sum(-1), want), dims)
