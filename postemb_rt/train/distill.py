"""What the student is pulled toward: the base-PCA and least-squares starts of the
projection, the teacher's view of the distillation posts (``teacher_stream``) and of related
pairs (``teacher_pairs``), and the Pearson-r similarity losses. Used by
:mod:`postemb_rt.train.trainer`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..durable import atomic_write
from . import data as D
from . import tasks as T
from .config import TrainConfig


def _batches_to_tensors(tokenizer, texts, pack):
    import torch

    ids, mask = pack(tokenizer(texts).ids, tokenizer.pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def _pearson_loss(s, t):
    """1 - Pearson r between two vectors of cosines (blind to an affine map of either, which
    no ranking metric sees)."""
    s, t = s - s.mean(), t - t.mean()
    return 1.0 - (s * t).sum() / (s.norm() * t.norm() + 1e-8)


def _similarity_loss(student, teacher):
    """1 - Pearson r between the off-diagonal cosines of ``student`` (n, 50) and ``teacher``
    (n, 384) unit rows, n >= 3: keeps the fine-tuned model's similarity structure close to
    the frozen base's."""
    import torch

    off = ~torch.eye(student.shape[0], dtype=torch.bool)
    return _pearson_loss((student @ student.t())[off], (teacher @ teacher.t())[off])


def general_posts(sd: T.SplitData) -> list[str]:
    """Every train text of every task (emoji, emotion, stance posts and the STS-B sentences),
    whichever tasks a run trains: the PCA initialisation's pool and the ``distill_posts``
    stream. Never a zero-shot task's texts."""
    sts_a, sts_b, _ = D.read_sts(sd.sts_path, strict=sd.strict)
    return sd.emoji.texts + sd.emotion.texts + sd.topic.texts + sts_a + sts_b


def _pooled(model, tokenizer, posts, pack):
    """float64 (n, H): the model's pooled vectors (before projection) of ``posts``, no grad."""
    import torch

    vecs = []
    with torch.no_grad():
        for i in range(0, len(posts), 64):
            ids, mask = _batches_to_tensors(tokenizer, posts[i:i + 64], pack)
            vecs.append(model(ids, mask)[0])
    return torch.cat(vecs).double()


def _pca_projection(model, tokenizer, posts, dim, pack):
    """(weight (dim, H), bias (dim,)) of PCA on the base's pooled vectors: the projection
    starts as the base-PCA baseline."""
    import torch

    x = _pooled(model, tokenizer, posts, pack)
    mean = x.mean(0)
    _, _, vt = torch.linalg.svd(x - mean, full_matrices=False)
    w = vt[:dim]
    if w.shape[0] < dim:  # fewer posts than dimensions: fill up with small random directions
        gen = torch.Generator().manual_seed(0)
        w = torch.cat([w, 0.01 * torch.randn(dim - w.shape[0], w.shape[1], generator=gen, dtype=w.dtype)])
    return w.float(), (-(w @ mean)).float()


def _cached_pca(md, model, tok, posts, cfg, pack, progress):
    """The PCA projection, cached under ``$POSTEMB_CACHE/pca/`` by base fingerprint, texts
    and sizes: the single-task runs share the multi-task run's initial projection and skip
    re-encoding the same texts (about a minute on 2 cores). An entry carries its key and the
    sha256 of its tensors (safetensors metadata); one that is damaged, moved, edited or of an
    older version is computed again, never used."""
    import hashlib

    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open, save_file

    from ..onnx_export import cache_root

    h = hashlib.sha256(f"{md.fingerprint}|{cfg.projection_dim}|{cfg.max_length}|".encode())
    h.update("\n".join(posts).encode())
    key = h.hexdigest()
    path = cache_root() / "pca" / f"{key[:20]}.safetensors"

    def digest(w, b):
        return hashlib.sha256(w.contiguous().numpy().tobytes() + b.contiguous().numpy().tobytes()).hexdigest()

    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            st = load_file(str(path))
            w, b = st["weight"], st["bias"]
            ok = (meta.get("key") == key and meta.get("sha256") == digest(w, b)
                  and tuple(w.shape) == (cfg.projection_dim, md.config.hidden_size))
        except (SafetensorError, OSError, KeyError, ValueError):
            ok = False
        if ok:
            progress(f"PCA projection from cache {path}")
            return w, b
        progress(f"PCA projection cache {path} is damaged, moved or of an older version; computing it again")
    w, b = _pca_projection(model, tok, posts, cfg.projection_dim, pack)
    w, b = w.contiguous(), b.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({"weight": w, "bias": b}, str(tmp),
                                             metadata={"key": key, "sha256": digest(w, b)}))
    return w, b


@dataclass
class TeacherStream:
    """The posts distilled on and the teacher's view of them (rows aligned with ``posts``):
    ``emb`` (n, D) unit rows, ``pca`` (n, projection_dim) unit rows of the teacher's
    embeddings projected on their top principal axes (fitted on these posts)."""

    posts: list[str]
    emb: np.ndarray
    pca: np.ndarray
    info: dict
    # (projection_dim, D) axes scaled by the median projection length, and (D,) mean: the map
    # from a ``pca`` row back to the teacher's space (direct_target "linear" starts there)
    back: tuple[np.ndarray, np.ndarray] | None = None


def teacher_stream(cfg: TrainConfig, sd: T.SplitData, progress=print) -> TeacherStream:
    """Embed the distillation pool (general posts of the train splits: never a zero-shot
    task's texts) with the teacher, once (cached), and fit its PCA targets."""
    from . import teacher as TT

    pool = sorted(set(general_posts(sd)))
    if cfg.distill_pool and cfg.distill_pool < len(pool):
        keep = np.random.default_rng([cfg.seed, 6]).permutation(len(pool))[:cfg.distill_pool]
        pool = [pool[i] for i in sorted(keep)]
    emb, info = TT.embed_cached(cfg.teacher, pool, cfg.teacher_max_length, threads=cfg.threads, progress=progress)
    pca, back, explained = teacher_pca(emb, cfg.projection_dim)
    return TeacherStream(pool, emb, pca, {**info, "pool": len(pool), "pca_explained": explained}, back)


def teacher_pca(emb: np.ndarray, dim: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], float]:
    """(targets, back, explained) of the teacher's embeddings ``emb`` (n, D): ``targets`` (n, dim)
    the unit rows of their coordinates on the top ``dim`` principal axes; ``back`` (axes x the
    median coordinate length (dim, D), mean (D,)), the way from a target back to the teacher's
    space; ``explained`` the share of the variance those axes hold."""
    x = emb.astype(np.float64)
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    pca = (x - mean) @ vt[:dim].T
    length = np.linalg.norm(pca, axis=1, keepdims=True)
    pca /= np.maximum(length, 1e-12)
    back = ((np.median(length) * vt[:dim]).astype(np.float32), mean.astype(np.float32))
    return pca.astype(np.float32), back, float((sv[:dim] ** 2).sum() / (sv ** 2).sum())


def teacher_pairs(cfg: TrainConfig, sd: T.SplitData, ts: TeacherStream, anchors: int = 8192) -> dict:
    """Related pairs of the distillation pool, as (P, 2) indices into ``ts.posts``: ``sts``
    (every STS-B train pair, whatever its score, both sentences in the pool) and
    ``neighbour`` (``anchors`` seeded pool posts, each with its top ``pair_neighbours``
    teacher neighbours; near-copies, cosine > 0.99, left out; none if ``pair_neighbours`` is 0)."""
    where = {t: i for i, t in enumerate(ts.posts)}
    a, b, _ = D.read_sts(sd.sts_path, strict=sd.strict)
    sts = np.array([(where[x], where[y]) for x, y in zip(a, b) if x in where and y in where and x != y],
                   dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng([cfg.seed, 7])
    pick = np.sort(rng.permutation(len(ts.posts))[:anchors])
    k = cfg.pair_neighbours
    nb = [np.zeros((0, 2), dtype=np.int64)]
    for i in range(0, len(pick) if k else 0, 1024):
        rows = pick[i:i + 1024]
        sim = ts.emb[rows] @ ts.emb.T
        sim[np.arange(len(rows)), rows] = -1.0
        sim[sim > 0.99] = -1.0
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        nb.append(np.stack([np.repeat(rows, k), top.ravel()], 1))
    return {"sts": sts, "neighbour": np.concatenate(nb).astype(np.int64)}


def least_squares_map(x, targets):
    """(weight (D, H), bias (D,)) float64: the minimum-norm least-squares affine map from ``x``
    (n, H) float64 to ``targets`` (n, D), by SVD (LAPACK gelsd). Not torch's CPU default, gelsy
    (pivoted QR): in torch's MKL it answered differently from call to call for the same input,
    mostly in the last digits, and on a loaded 2-core machine by up to 20% of the largest weight
    (2026-12-04; a small run's input, 64 posts, not ill-conditioned: why MKL does this was not
    found), so two runs of one config started apart. gelsd gave the same answer on every call."""
    import torch

    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(x1, targets, driver="gelsd").solution  # (H + 1, D)
    return sol[:-1].t(), sol[-1]


def _lstsq_projection(model, tokenizer, posts, targets, pack):
    """(weight (D, H), bias (D,)): least squares from the base's pooled vectors of ``posts``
    to ``targets`` (n, D): the projection starts as the best linear map onto the teacher."""
    import torch

    w, b = least_squares_map(_pooled(model, tokenizer, posts, pack), torch.from_numpy(targets).double())
    return w.float().contiguous(), b.float().contiguous()
