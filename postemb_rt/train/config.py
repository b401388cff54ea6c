"""The training config (``TrainConfig``: every key of a ``postemb train --config`` file, with
its checks) and the task schedule it fixes up front. The recipe that reads it:
:mod:`postemb_rt.train.trainer`."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ValidationError
from . import tasks as T

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
    task_batches: str = "one"  # "one": each step one task (the paper's); "mixed": each step several (see step_pairs)
    loss: str = "bce"  # or "contrastive"
    task_weight: float = 1.0  # the task loss's weight beside the distillation terms
    task_balance: str = "pairs"  # "pairs": every pair weighs the same; "tasks": every task's pairs weigh the same in all
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
    calibration: str = "shared"  # the task loss's scale s and offset c: "shared" by every task, or "per_task"
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
    # Nested dimensions (Matryoshka, see postemb_rt.train.losses): every loss term is computed on the
    # first k components re-normalised, for each k, and summed with matryoshka_weights (default all 1).
    # Descending, starting at projection_dim, e.g. [50, 32, 16, 8]. None (or [projection_dim]): today's loss.
    matryoshka_dims: list[int] | None = None
    matryoshka_weights: list[float] | None = None

    def nested_dims(self) -> list[tuple[int, float]]:
        """[(k, weight), ...] of the trained prefixes, descending; [(projection_dim, 1.0)] without nesting."""
        dims = self.matryoshka_dims or [self.projection_dim]
        weights = self.matryoshka_weights or [1.0] * len(dims)
        return [(int(k), float(w)) for k, w in zip(dims, weights)]

    @classmethod
    def from_file(cls, path: str | Path, seed: int | None = None) -> "TrainConfig":
        """``seed`` (if given) replaces the file's seed, in a ``steps_from`` reference too.
        ``"extends": "other.json"`` (relative to the file) starts from that config's keys."""
        return cls._from_file(Path(path), seed, (), None)

    @classmethod
    def _from_file(cls, path: Path, seed, chain: tuple, named_by: str | None) -> "TrainConfig":
        """``chain``: the resolved files whose ``steps_from`` led here; ``named_by``: who named this file."""
        raw = _read_config(path, named_by)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValidationError(f"`{path}` has unknown keys {unknown}. Known keys: {sorted(known)}.")
        if seed is not None:
            raw["seed"] = seed
        cfg = cls(**raw)
        if cfg.steps_from:
            ref_path = (path.parent / cfg.steps_from).resolve()
            chain = chain + (path.resolve(),)
            if ref_path in chain:
                raise ValidationError(f"`steps_from` in {path} makes a cycle: {[str(p) for p in chain + (ref_path,)]}. "
                                      "Fix: name the multi-task config whose schedule gives this run's steps.")
            ref = cls._from_file(ref_path, seed, chain, f"`steps_from` in {path}")
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
        if not self.task_weight > 0:
            raise ValidationError(f"`task_weight` in {where} must be > 0 (a run without its task loss trains no task). "
                                  f"Given: {self.task_weight}.")
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
        if self.task_batches not in ("one", "mixed"):
            raise ValidationError(f"`task_batches` in {where} must be 'one' or 'mixed'. Given: {self.task_batches!r}.")
        if self.task_batches == "mixed" and self.loss != "bce":
            raise ValidationError(f"`task_batches` 'mixed' in {where} needs `loss` 'bce' (a contrastive softmax over "
                                  f"several tasks' label names is not defined here). Given: loss {self.loss!r}.")
        if self.task_balance not in ("pairs", "tasks"):
            raise ValidationError(f"`task_balance` in {where} must be 'pairs' or 'tasks'. Given: {self.task_balance!r}.")
        if self.calibration not in ("shared", "per_task"):
            raise ValidationError(f"`calibration` in {where} must be 'shared' or 'per_task'. Given: {self.calibration!r}.")
        if self.direct_target not in ("pca", "linear"):
            raise ValidationError(f"`direct_target` in {where} must be 'pca' or 'linear'. Given: {self.direct_target!r}.")
        if self.projection_init == "teacher" and not self.teacher:
            raise ValidationError(f"`projection_init` 'teacher' in {where} needs a `teacher`.")
        self._check_matryoshka(where)
        if not self.tasks or self.steps < 1 or self.batch_size < 2:
            raise ValidationError(f"{where}: needs tasks, steps >= 1 and batch_size >= 2.")

    def _check_matryoshka(self, where):
        dims, weights, d = self.matryoshka_dims, self.matryoshka_weights, self.projection_dim
        if dims is not None:
            ints = isinstance(dims, list) and dims and all(isinstance(k, int) and not isinstance(k, bool) for k in dims)
            if not ints:
                raise ValidationError(f"`matryoshka_dims` in {where} must be a non-empty list of ints. "
                                      f"Given: {dims!r}. Fix: e.g. [{d}, 32, 16, 8], or leave it out.")
            if not (dims[0] == d and all(1 <= k <= d for k in dims) and all(a > b for a, b in zip(dims, dims[1:]))):
                raise ValidationError(
                    f"`matryoshka_dims` in {where} must be strictly descending, start at projection_dim ({d}: the "
                    f"full vector is what the model serves by default) and stay >= 1, without duplicates. Given: "
                    f"{dims}. Fix: e.g. {[d] + [k for k in sorted(set(dims), reverse=True) if 1 <= k < d]}.")
            if len(dims) > 1 and self.direct_weight and self.direct_target != "pca":
                raise ValidationError(f"`matryoshka_dims` in {where} needs `direct_target` 'pca' (a prefix k is pulled "
                                      f"toward the teacher's top k principal axes; a learnt map to the teacher has no "
                                      f"nested form here). Given: direct_target {self.direct_target!r}.")
        if weights is not None:
            n = len(dims) if dims else 1
            ok = (isinstance(weights, list) and len(weights) == n
                  and all(isinstance(w, (int, float)) and not isinstance(w, bool) and 0 < w < float("inf")
                          for w in weights))
            if not ok:
                raise ValidationError(f"`matryoshka_weights` in {where} must be a list of {n} numbers > 0, one per "
                                      f"entry of `matryoshka_dims` ({dims}). Given: {weights!r}. Fix: one positive "
                                      "weight per dim, or leave it out (all 1).")


def _read_config(path: Path, named_by: str | None = None, seen: tuple = ()) -> dict:
    """The JSON keys of a config file, ``_comment`` keys dropped, ``extends`` resolved.
    ``named_by``: the key and file that named this one (None: the ``--config`` file itself);
    ``seen``: the resolved files whose ``extends`` led here."""
    what = f"{named_by} names {str(path)!r}, which" if named_by else f"`--config` {str(path)!r}"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        fix = " Fix: name a config file by its path relative to the file that names it." if named_by else ""
        raise ValidationError(f"{what} could not be read as JSON: {exc}.{fix}") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"{what} must hold a JSON object of config keys. Given: a {type(raw).__name__}.")
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not (isinstance(parent, str) and parent):
        raise ValidationError(f"`extends` in {path} must be a config file's path relative to it, e.g. "
                              f"\"multitask.json\". Given: {parent!r}.")
    ref = (path.parent / parent).resolve()
    chain = seen + (path.resolve(),)
    if ref in chain:
        raise ValidationError(f"`extends` in {path} makes a cycle: {[str(p) for p in chain + (ref,)]}.")
    return {**_read_config(ref, f"`extends` in {path}", chain), **raw}


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


def step_pairs(cfg: TrainConfig, plan: list[str]) -> list[dict[str, int]]:
    """The pairs of each task in every step. ``task_batches`` "one": ``batch_size`` pairs of the
    step's task of ``plan``. "mixed": the same pairs per task over the run (``batch_size`` x that
    task's steps of ``plan``, so single-task runs with ``steps_from`` stay matched), dealt across
    the steps in a seeded shuffle: each step holds ``batch_size`` pairs of several tasks."""
    if cfg.task_batches == "one":
        return [{t: cfg.batch_size} for t in plan]
    slots = np.repeat(np.array(plan), cfg.batch_size)
    np.random.default_rng([cfg.seed, 9]).shuffle(slots)
    out = []
    for row in slots.reshape(len(plan), cfg.batch_size):
        n = {t: int((row == t).sum()) for t in cfg.tasks}
        out.append({t: k for t, k in n.items() if k})
    return out


def task_schedule_counts(cfg: TrainConfig) -> dict[str, int]:
    s = schedule(cfg)
    return {t: s.count(t) for t in cfg.tasks}
