"""Multi-task fine-tuning: base encoder + LoRA -> masked mean pool -> linear to 50 -> L2.

One step = one task (drawn by temperature-scaled mixing, the whole schedule fixed by the
seed up front) and ``batch_size`` pairs of it. Loss ``bce`` (the paper's): binary
cross-entropy on ``s * cos(a, b) + c`` with a learnt scale s and offset c; ``contrastive``
(option): softmax over the batch's distinct b texts (in-batch negatives), positives only.

Distillation (``teacher``): a stronger sentence encoder embeds the general posts of the
train splits once (cached, ``teacher.py``); every step then adds ``distill_posts`` of them
to the task batch, with up to three terms on their 50-d embeddings: ``distill_weight``
(1 - Pearson r of in-batch cosines against the teacher's), ``direct_weight`` (1 - cosine
to the teacher's embedding reduced to 50-d by PCA on the pool, or through a learnt linear
map) and ``nce_weight`` (softmax over the stream's PCA targets: in-batch negatives).
``pair_weight`` adds ``pair_posts`` related pairs per step (half STS-B train pairs of every
score, half posts with one of their teacher-nearest neighbours in the pool; all STS-B pairs
if ``pair_neighbours`` is 0): 1 - Pearson r of the student's pair cosines against the
teacher's. Random posts are mostly unrelated, so the in-batch term says little about how
close two related texts are; this term does.
Without a teacher, ``distill_weight`` compares the step's anchors with the frozen base.

Output: a normal model directory (``postemb.json``, ``projection.safetensors``,
``adapters.safetensors``; the encoder borrowed from the pip package) plus
``train_summary.json`` (time, trained parameters, pairs per task, loss curve).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from . import data as D
from . import tasks as T

log = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.safetensors"
SUMMARY_FILE = "train_summary.json"
LORA_TARGETS = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]


@dataclass
class TrainConfig:
    model_version: str = "postemb-mt50"
    tasks: list[str] = field(default_factory=lambda: list(T.TASKS))
    data: str | None = None  # data root (tweeteval/, stsb/); default: postemb_rt.data.data_root()
    base: str = "base"
    steps: int = 1000
    steps_from: str | None = None  # another config: take this run's steps = that run's steps of our task
    batch_size: int = 32
    mixing_temperature: float = 2.0
    loss: str = "bce"  # or "contrastive"
    lr: float = 5e-4  # adapters
    head_lr: float = 2e-3  # projection, scale, offset
    warmup_frac: float = 0.05
    weight_decay: float = 0.0
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_layers: list[int] | None = None  # None: all
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    projection_dim: int = 50
    projection_init: str = "pca"  # or "random", or "teacher": least squares onto the teacher's PCA targets
    pca_posts: int = 2000
    scale_init: float = 10.0
    max_length: int = 64  # training truncation; the shipped model keeps the base's 256
    seed: int = 0
    threads: int = 2
    log_every: int = 20
    distill_weight: float = 0.0  # similarity preservation (see _similarity_loss); 0: off
    distill_posts: int = 0  # per step, general posts added to the similarity term's batch (see general_posts)
    # Distillation from a teacher (see the module docstring): a registered name ("all-mpnet-base-v2",
    # `postemb teacher fetch`), "base", or a sentence-transformers folder. None: distill_weight keeps
    # the similarity structure of the frozen base on each step's anchors (the v2 recipe).
    teacher: str | None = None
    teacher_max_length: int = 128
    distill_pool: int = 0  # general posts the teacher embeds once (0: all of them)
    direct_weight: float = 0.0  # 1 - cos(student, teacher target) on the stream posts
    direct_target: str = "pca"  # "pca": the teacher's top projection_dim principal axes; "linear": a learnt map to the teacher
    nce_weight: float = 0.0  # in-batch negatives: softmax over the stream's teacher PCA targets
    nce_temperature: float = 0.05
    pair_weight: float = 0.0  # 1 - Pearson r of related pairs' cosines vs the teacher's (see teacher_pairs)
    pair_posts: int = 16  # related pairs per step (half STS-B train pairs, half teacher neighbours)
    pair_neighbours: int = 10  # a neighbour pair takes one of a post's top-k teacher neighbours; 0: STS-B pairs only
    probe_pairs: int = 32  # per task: a fixed sample of train pairs whose loss is measured before and after

    @classmethod
    def from_file(cls, path: str | Path, seed: int | None = None) -> "TrainConfig":
        """``seed`` (if given) replaces the file's seed, in a ``steps_from`` reference too.
        ``"extends": "other.json"`` (relative to the file) starts from that config's keys."""
        path = Path(path)
        raw = _read_config(path)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValidationError(f"`{path}` has unknown keys {unknown}. Known keys: {sorted(known)}.")
        if seed is not None:
            raw["seed"] = seed
        cfg = cls(**raw)
        if cfg.steps_from:
            ref_path = (path.parent / cfg.steps_from).resolve()
            ref = cls.from_file(ref_path, seed)
            if len(cfg.tasks) != 1 or cfg.tasks[0] not in ref.tasks:
                raise ValidationError(f"`steps_from` needs exactly one task of {ref_path}'s tasks. Given: {cfg.tasks}.")
            cfg.steps = max(1, task_schedule_counts(ref)[cfg.tasks[0]])
        cfg.validate(path)
        return cfg

    def validate(self, where="config"):
        if self.loss not in ("bce", "contrastive"):
            raise ValidationError(f"`loss` in {where} must be 'bce' or 'contrastive'. Given: {self.loss!r}.")
        if self.projection_init not in ("pca", "random", "teacher"):
            raise ValidationError(f"`projection_init` in {where} must be 'pca', 'random' or 'teacher'. "
                                  f"Given: {self.projection_init!r}.")
        for t in self.tasks:
            if t in T.ZERO_SHOT:
                raise ValidationError(f"`tasks` in {where} must not include {t!r}: it is a zero-shot evaluation task.")
            if t not in T.TASKS:
                raise ValidationError(f"`tasks` in {where} entries must be among {list(T.TASKS)}. Given: {t!r}.")
        if self.distill_weight < 0:
            raise ValidationError(f"`distill_weight` in {where} must be >= 0. Given: {self.distill_weight}.")
        terms = {"distill_weight": self.distill_weight, "direct_weight": self.direct_weight,
                 "nce_weight": self.nce_weight, "pair_weight": self.pair_weight}
        for k, v in terms.items():
            if v < 0:
                raise ValidationError(f"`{k}` in {where} must be >= 0. Given: {v}.")
        if self.distill_posts < 0 or (self.distill_posts and not any(terms.values())):
            raise ValidationError(f"`distill_posts` in {where} must be >= 0, and needs a distillation term > 0. "
                                  f"Given: distill_posts {self.distill_posts}, {terms}.")
        if self.teacher:
            if self.distill_posts < 2 or not any(terms.values()):
                raise ValidationError(f"`teacher` in {where} needs `distill_posts` >= 2 and a distillation term > 0 "
                                      f"(the teacher is distilled on that stream). Given: distill_posts "
                                      f"{self.distill_posts}, {terms}.")
        elif self.direct_weight or self.nce_weight or self.pair_weight:
            raise ValidationError(f"`direct_weight`, `nce_weight` and `pair_weight` in {where} need a `teacher`. "
                                  f"Given: direct_weight {self.direct_weight}, nce_weight {self.nce_weight}, "
                                  f"pair_weight {self.pair_weight}.")
        if self.pair_weight and (self.pair_posts < 4 or self.pair_neighbours < 0):
            raise ValidationError(f"`pair_weight` in {where} needs `pair_posts` >= 4 and `pair_neighbours` >= 0. "
                                  f"Given: pair_posts {self.pair_posts}, pair_neighbours {self.pair_neighbours}.")
        if self.direct_target not in ("pca", "linear"):
            raise ValidationError(f"`direct_target` in {where} must be 'pca' or 'linear'. Given: {self.direct_target!r}.")
        if self.projection_init == "teacher" and not self.teacher:
            raise ValidationError(f"`projection_init` 'teacher' in {where} needs a `teacher`.")
        if not self.tasks or self.steps < 1 or self.batch_size < 2:
            raise ValidationError(f"{where}: needs tasks, steps >= 1 and batch_size >= 2.")


def _read_config(path: Path, seen: tuple = ()) -> dict:
    """The JSON keys of a config file, ``_comment`` keys dropped, ``extends`` resolved."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValidationError(f"`--config` {str(path)!r} could not be read as JSON: {exc}.") from None
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    ref = (path.parent / parent).resolve()
    if ref in seen:
        raise ValidationError(f"`extends` in {path} makes a cycle: {[str(p) for p in seen + (ref,)]}.")
    return {**_read_config(ref, seen + (path.resolve(),)), **raw}


def data_root_of(cfg: TrainConfig) -> Path:
    from ..data import data_root

    return Path(cfg.data).expanduser() if cfg.data else data_root()


def task_sizes(cfg: TrainConfig) -> dict[str, int]:
    sd = T.load_split(data_root_of(cfg), "train")
    return {t: len(T.build_task(sd, t)) for t in cfg.tasks}


def schedule(cfg: TrainConfig, sizes: dict[str, int] | None = None) -> list[str]:
    """The task of every step, fixed by the seed and the mixing temperature."""
    sizes = sizes or task_sizes(cfg)
    p = T.mixing_probabilities(sizes, cfg.mixing_temperature)
    rng = np.random.default_rng([cfg.seed, 1])
    names = list(p)
    return [names[i] for i in rng.choice(len(names), size=cfg.steps, p=[p[t] for t in names])]


def task_schedule_counts(cfg: TrainConfig) -> dict[str, int]:
    s = schedule(cfg)
    return {t: s.count(t) for t in cfg.tasks}


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
    re-encoding the same texts (about a minute on 2 cores)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from ..onnx_export import cache_root

    h = hashlib.sha256(f"{md.fingerprint}|{cfg.projection_dim}|{cfg.max_length}|".encode())
    h.update("\n".join(posts).encode())
    path = cache_root() / "pca" / f"{h.hexdigest()[:20]}.safetensors"
    if path.exists():
        st = load_file(str(path))
        progress(f"PCA projection from cache {path}")
        return st["weight"], st["bias"]
    w, b = _pca_projection(model, tok, posts, cfg.projection_dim, pack)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"weight": w.contiguous(), "bias": b.contiguous()}, str(tmp))
    tmp.replace(path)
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


def teacher_stream(cfg: TrainConfig, sd: T.SplitData, progress=print) -> TeacherStream:
    """Embed the distillation pool (general posts of the train splits: never a zero-shot
    task's texts) with the teacher, once (cached), and fit its PCA targets."""
    from . import teacher as TT

    pool = sorted(set(general_posts(sd)))
    if cfg.distill_pool and cfg.distill_pool < len(pool):
        keep = np.random.default_rng([cfg.seed, 6]).permutation(len(pool))[:cfg.distill_pool]
        pool = [pool[i] for i in sorted(keep)]
    emb, info = TT.embed_cached(cfg.teacher, pool, cfg.teacher_max_length, threads=cfg.threads, progress=progress)
    x = emb.astype(np.float64)
    mean = x.mean(0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    pca = (x - mean) @ vt[:cfg.projection_dim].T
    pca /= np.maximum(np.linalg.norm(pca, axis=1, keepdims=True), 1e-12)
    info = {**info, "pool": len(pool),
            "pca_explained": float((sv[:cfg.projection_dim] ** 2).sum() / (sv ** 2).sum())}
    return TeacherStream(pool, emb, pca.astype(np.float32), info)


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


def _lstsq_projection(model, tokenizer, posts, targets, pack):
    """(weight (D, H), bias (D,)): least squares from the base's pooled vectors of ``posts``
    to ``targets`` (n, D): the projection starts as the best linear map onto the teacher."""
    import torch

    x = _pooled(model, tokenizer, posts, pack)
    x1 = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    sol = torch.linalg.lstsq(x1, torch.from_numpy(targets).double()).solution  # (H + 1, D)
    return sol[:-1].t().float().contiguous(), sol[-1].float().contiguous()


def train(cfg: TrainConfig, out: str | Path, progress=print) -> dict:
    """Train and write the model directory ``out``. Returns the summary dict."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from ..model_dir import CONFIG_FILE, PROJECTION_FILE, BASE_PACKAGE, PostEmbConfig, resolve
    from ..modeling import PostEmbModel
    from ..native import pack_padded
    from ..tokenization import PostTokenizer
    from .lora import add_lora, adapter_state

    t_start = time.perf_counter()
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    root = data_root_of(cfg)
    sd = T.load_split(root, "train")
    tasks = {t: T.build_task(sd, t) for t in cfg.tasks}
    sizes = {t: len(v) for t, v in tasks.items()}
    plan = schedule(cfg, sizes)
    probs = T.mixing_probabilities(sizes, cfg.mixing_temperature)
    progress(f"tasks (anchors): {sizes}; mixing p: { {t: round(p, 3) for t, p in probs.items()} }; steps {cfg.steps}")

    md = resolve(cfg.base)
    if md.config.projection_dim:
        raise ValidationError(f"`base` must be an encoder without a projection. Given: {cfg.base!r}.")
    model = PostEmbModel.from_model_dir(md)
    tok = PostTokenizer(md.tokenizer_path, cfg.max_length)
    hidden = md.config.hidden_size
    proj = nn.Linear(hidden, cfg.projection_dim)
    t_teacher = time.perf_counter()
    ts = teacher_stream(cfg, sd, progress) if cfg.teacher else None
    t_teacher = time.perf_counter() - t_teacher  # the one-time teacher cache, reported apart from training
    if ts is not None:
        progress(f"teacher {cfg.teacher}: {ts.info['pool']} posts, {ts.info['dim']}-d; its top {cfg.projection_dim} "
                 f"principal axes hold {ts.info['pca_explained']:.1%} of the variance")
    if cfg.projection_init == "teacher":
        rng = np.random.default_rng([cfg.seed, 2])
        pick = rng.permutation(len(ts.posts))[:cfg.pca_posts]
        w, b = _lstsq_projection(model, tok, [ts.posts[i] for i in pick], ts.pca[pick], pack_padded)
        with torch.no_grad():
            proj.weight.copy_(w)
            proj.bias.copy_(b)
    elif cfg.projection_init == "pca":
        rng = np.random.default_rng([cfg.seed, 2])
        # the same pool whichever tasks this run trains: single-task runs start from the multi-task run's projection
        pool = general_posts(sd)
        posts = [pool[i] for i in rng.permutation(len(pool))[:cfg.pca_posts]]
        w, b = _cached_pca(md, model, tok, posts, cfg, pack_padded, progress)
        with torch.no_grad():
            proj.weight.copy_(w)
            proj.bias.copy_(b)
    teacher = None
    if cfg.distill_weight > 0 and ts is None:  # the frozen base, 384-d, no projection
        teacher = PostEmbModel.from_model_dir(md).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    wrapped = add_lora(model.encoder, cfg.lora_targets, cfg.lora_layers, cfg.lora_rank, cfg.lora_alpha)
    model.projection = proj
    log_scale = nn.Parameter(torch.tensor(math.log(cfg.scale_init)))
    offset = nn.Parameter(torch.tensor(-0.5 * cfg.scale_init))
    adapter_params = [p for p in model.encoder.parameters() if p.requires_grad]
    head_params = list(proj.parameters()) + [log_scale, offset]
    pairs_of = None
    if ts is not None and cfg.pair_weight:
        pairs_of = teacher_pairs(cfg, sd, ts)
        progress(f"pair term: {len(pairs_of['sts'])} STS-B train pairs, {len(pairs_of['neighbour'])} neighbour pairs")
    to_teacher = None  # direct_target "linear": a map from the 50-d output to the teacher (training only)
    if ts is not None and cfg.direct_weight and cfg.direct_target == "linear":
        to_teacher = nn.Linear(cfg.projection_dim, ts.emb.shape[1])
        head_params += list(to_teacher.parameters())
    n_trained = sum(p.numel() for p in adapter_params + head_params)
    opt = torch.optim.AdamW([{"params": adapter_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    probe_rng = np.random.default_rng([cfg.seed, 4])
    probe = {t: task.sample(probe_rng, cfg.probe_pairs) for t, task in tasks.items()} if cfg.probe_pairs else {}

    stream = general_posts(sd) if cfg.distill_posts and ts is None else []
    stream_rng = np.random.default_rng([cfg.seed, 5])
    pair_rng = np.random.default_rng([cfg.seed, 8])  # its own stream: pair_weight 0 leaves the other draws as they were
    if ts is not None:
        t_emb, t_pca = torch.from_numpy(ts.emb), torch.from_numpy(ts.pca)

    def teacher_loss(idx):
        """The distillation terms on the stream posts ``idx`` (indices into ts.posts)."""
        es = model(*_batches_to_tensors(tok, [ts.posts[i] for i in idx], pack_padded))[1]
        idx = torch.from_numpy(idx)
        terms = {}
        if cfg.distill_weight:
            terms["similarity"] = cfg.distill_weight * _similarity_loss(es, t_emb[idx])
        if cfg.direct_weight:
            if to_teacher is None:
                got, want = es, t_pca[idx]
            else:
                got, want = nn.functional.normalize(to_teacher(es), dim=-1), t_emb[idx]
            terms["direct"] = cfg.direct_weight * (1.0 - (got * want).sum(-1)).mean()
        if cfg.nce_weight:
            logits = es @ t_pca[idx].t() / cfg.nce_temperature
            terms["nce"] = cfg.nce_weight * nn.functional.cross_entropy(logits, torch.arange(len(idx)))
        if pairs_of is not None:
            half = cfg.pair_posts // 2 if len(pairs_of["neighbour"]) else cfg.pair_posts
            pr = np.concatenate([v[pair_rng.integers(len(v), size=n)] for v, n in
                                 ((pairs_of["sts"], half), (pairs_of["neighbour"], cfg.pair_posts - half)) if len(v)])
            e = model(*_batches_to_tensors(tok, [ts.posts[i] for i in pr.ravel()], pack_padded))[1].view(len(pr), 2, -1)
            want = (t_emb[pr[:, 0]] * t_emb[pr[:, 1]]).sum(-1)
            terms["pair"] = cfg.pair_weight * _pearson_loss((e[:, 0] * e[:, 1]).sum(-1), want)
        return terms

    def pair_loss(pairs, contrastive, distill=0.0, extra=()):
        # b texts are de-duplicated: a label task's batch encodes each label name once, and the
        # contrastive softmax runs over distinct b texts (a repeated label is not its own negative)
        uniq: dict[str, int] = {}
        for p in pairs:
            uniq.setdefault(p.b, len(uniq))
        col = torch.tensor([uniq[p.b] for p in pairs])
        a_batch = _batches_to_tensors(tok, [p.a for p in pairs], pack_padded)
        ea = model(*a_batch)[1]
        eb = model(*_batches_to_tensors(tok, list(uniq), pack_padded))[1]
        if not contrastive:
            cos = (ea * eb[col]).sum(-1)
            y = torch.tensor([p.label for p in pairs])
            loss = nn.functional.binary_cross_entropy_with_logits(log_scale.exp() * cos + offset, y)
        else:
            loss = nn.functional.cross_entropy(log_scale.exp() * ea @ eb.t(), col)
        if distill:  # on the anchors (posts, sentences: never label names, which the tasks move)
            with torch.no_grad():
                ta = teacher(*a_batch)[1]
            if extra:  # plus general posts, so the term also sees texts outside the step's task
                x_batch = _batches_to_tensors(tok, list(extra), pack_padded)
                ea = torch.cat([ea, model(*x_batch)[1]])
                with torch.no_grad():
                    ta = torch.cat([ta, teacher(*x_batch)[1]])
            loss = loss + distill * _similarity_loss(ea, ta)
        return loss

    def probe_losses():
        # BCE (the paper's loss) on the fixed probe pairs, dropout off: comparable before/after
        model.eval()
        with torch.no_grad():
            got = {t: round(pair_loss(ps, False).item(), 4) for t, ps in probe.items()}
        model.train()
        return got

    probe_start = probe_losses()
    model.train()
    progress(f"set-up {time.perf_counter() - t_start:.0f}s; {n_trained} trained parameters")
    t_loop = time.perf_counter()
    rng = np.random.default_rng([cfg.seed, 3])
    seen = {t: 0 for t in cfg.tasks}
    curve, window, term_window = [], [], {}
    for step, tname in enumerate(plan):
        pairs = tasks[tname].sample(rng, cfg.batch_size, positives_only=cfg.loss == "contrastive")
        extra = [stream[i] for i in stream_rng.integers(len(stream), size=cfg.distill_posts)] if stream else ()
        loss = pair_loss(pairs, cfg.loss == "contrastive", cfg.distill_weight if ts is None else 0.0, extra)
        if ts is not None:
            n = min(cfg.distill_posts, len(ts.posts))  # distinct posts: in-batch negatives are never the post itself
            terms = teacher_loss(stream_rng.choice(len(ts.posts), size=n, replace=False))
            for k, v in terms.items():
                term_window.setdefault(k, []).append(v.item())
            loss = loss + sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter_params + head_params, 1.0)
        opt.step()
        sched.step()
        seen[tname] += len(pairs)
        window.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            curve.append({"step": step + 1, "loss": float(np.mean(window)),
                          **{k: float(np.mean(v)) for k, v in term_window.items()}})
            window, term_window = [], {}
            el = time.perf_counter() - t_loop
            parts = "".join(f" {k} {curve[-1][k]:.4f}" for k in ("similarity", "direct", "nce", "pair") if k in curve[-1])
            progress(f"step {step + 1}/{cfg.steps} loss {curve[-1]['loss']:.4f}{parts} scale {log_scale.exp().item():.2f} "
                     f"{el / (step + 1):.2f}s/step, eta {el / (step + 1) * (cfg.steps - step - 1):.0f}s")
    probe_end = probe_losses()
    progress(f"probe loss (BCE on {cfg.probe_pairs} fixed train pairs per task) before {probe_start} after {probe_end}")
    train_seconds = time.perf_counter() - t_start - t_teacher

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in proj.state_dict().items()}, str(out / PROJECTION_FILE))
    save_file(adapter_state(model.encoder), str(out / ADAPTERS_FILE))
    pcfg = PostEmbConfig(model_version=cfg.model_version, hidden_size=hidden, projection_dim=cfg.projection_dim,
                         normalize=True, max_length=md.config.max_length, encoder=f"pip:{BASE_PACKAGE}",
                         adapters=ADAPTERS_FILE)
    (out / CONFIG_FILE).write_text(pcfg.to_json())
    artefact = sum((out / f).stat().st_size for f in (CONFIG_FILE, PROJECTION_FILE, ADAPTERS_FILE))
    summary = {
        "model_version": cfg.model_version,
        "config": dataclasses.asdict(cfg),
        "data_root": str(root),
        "train_seconds": round(train_seconds, 1),
        "threads": cfg.threads,
        "trained_parameters": n_trained,
        "lora_layers_wrapped": len(wrapped),
        "artefact_bytes": artefact,
        "task_anchors": sizes,
        "mixing_probabilities": probs,
        "pairs_seen": seen,
        "final_scale": log_scale.exp().item(),
        "final_offset": offset.item(),
        "probe_loss_start": probe_start,
        "probe_loss_end": probe_end,
        "loss_curve": curve,
    }
    if ts is not None:
        summary["teacher"] = {**ts.info, "load_seconds": round(t_teacher, 1)}
    if pairs_of is not None:
        summary["pair_pool"] = {k: len(v) for k, v in pairs_of.items()}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    progress(f"trained {n_trained} parameters in {train_seconds:.0f}s; artefact {artefact / 1e6:.2f} MB -> {out}")
    return summary
