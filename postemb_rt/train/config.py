"""The training config (``TrainConfig``: every key of a ``postemb train --config`` file, with
its checks) and the task schedule it fixes up front. The recipe that reads it:
:mod:`postemb_rt.train.trainer`."""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import PostEmbError, ValidationError
from ..st_folder import positions as read_positions
from . import tasks as T

LORA_TARGETS = ["attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"]
# the most texts of one kind a step encodes in one batch with gradients (batch_size pairs, distill_posts,
# pair_posts pairs): memory grows with their number x max_length, and a run far past it is killed for
# memory without an error (100,000 distill_posts was). The configs use 32.
MAX_STEP_POSTS = 1024


class Range(NamedTuple):
    """A numeric key's type and range: ``low`` <= x (< x if ``low_open``), x <= ``high`` (< if ``high_open``)."""
    integer: bool
    low: float
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    why: str = ""  # what the value means, said after the range


# Every key of TrainConfig is checked by exactly one of RANGES, CHOICES, NAMES or its own code (OWN_CHECKS)
RANGES = {
    "steps": Range(True, 1),
    "batch_size": Range(True, 2, high=MAX_STEP_POSTS, why="pairs per step"),
    "mixing_temperature": Range(False, 0.1, why="p_t ~ n_t ** (1 / T): 1 proportional, large uniform; below 0.1 "
                                "every step goes to the largest task, and n_t ** (1 / T) overflows near 0"),
    "task_weight": Range(False, 0, True, why="a run without its task loss trains no task"),
    "lr": Range(False, 0, True), "head_lr": Range(False, 0, True),
    "warmup_frac": Range(False, 0, high=1, high_open=True, why="the share of the steps the learning rate warms up"),
    "weight_decay": Range(False, 0),
    "lora_rank": Range(True, 1), "lora_alpha": Range(False, 0, True),
    "projection_dim": Range(True, 1, why="the served vector's dims, at most the base's hidden size"),
    "pca_posts": Range(True, 1),
    "scale_init": Range(False, 0, True, why="the task loss's scale starts here and is learnt as its log"),
    "max_length": Range(True, 2, why="room for [CLS] and [SEP]"),
    "seed": Range(True, 0, high=2 ** 64, high_open=True, why="numpy's and torch's seeds"),
    "threads": Range(True, 1), "log_every": Range(True, 1),
    "distill_weight": Range(False, 0),
    "distill_posts": Range(True, 0, high=MAX_STEP_POSTS, why="posts per step, encoded in one batch"),
    "teacher_max_length": Range(True, 2, why="room for [CLS] and [SEP]"),
    "distill_pool": Range(True, 0, why="0: every general post"),
    "direct_weight": Range(False, 0), "nce_weight": Range(False, 0), "nce_temperature": Range(False, 0, True),
    "pair_weight": Range(False, 0),
    "pair_posts": Range(True, 0, high=MAX_STEP_POSTS, why="pairs per step, encoded in one batch"),
    "pair_neighbours": Range(True, 0, why="0: STS-B pairs only"),
    "probe_pairs": Range(True, 0, why="pairs per task; 0: no probe"),
}
CHOICES = {"task_batches": ("one", "mixed"), "loss": ("bce", "contrastive"), "task_balance": ("pairs", "tasks"),
           "projection_init": ("pca", "random", "teacher"), "calibration": ("shared", "per_task"),
           "direct_target": ("pca", "linear")}
# key: (None allowed?, what the string is)
NAMES = {"base": (False, "'base' or an encoder directory"),
         "data": (True, "the data root, relative to the config file; left out: the default"),
         "steps_from": (True, "a config file relative to this one"),
         "teacher": (True, "a registered teacher, 'base' or a sentence-transformers folder")}
OWN_CHECKS = ("model_version", "tasks", "lora_layers", "lora_targets", "matryoshka_dims", "matryoshka_weights")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class TrainConfig:
    # the vector version the run writes; None: "postemb-mt50-<hash of every other key but threads>", so two
    # configs that set none never share one (their vectors must not mix in a store)
    model_version: str | None = None
    tasks: list[str] = field(default_factory=lambda: list(T.TASKS))
    # data root (tweeteval/, stsb/): relative to the config file (to the working directory for a config made in
    # Python); None: postemb_rt.data.data_root() (POSTEMB_DATA, else ../shared/data)
    data: str | None = None
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
    source = None  # not a key: the file read by from_file, from whose folder a relative `data` is read

    def __post_init__(self):
        if self.model_version is None:
            keys = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("model_version", "threads")}
            digest = hashlib.sha256(json.dumps(keys, sort_keys=True, default=repr).encode()).hexdigest()
            self.model_version = f"postemb-mt50-{digest[:8]}"

    def nested_dims(self) -> list[tuple[int, float]]:
        """[(k, weight), ...] of the trained prefixes, descending; [(projection_dim, 1.0)] without nesting."""
        dims = self.matryoshka_dims or [self.projection_dim]
        weights = self.matryoshka_weights or [1.0] * len(dims)
        return [(int(k), float(w)) for k, w in zip(dims, weights)]

    @classmethod
    def from_file(cls, path: str | Path, seed: int | None = None) -> "TrainConfig":
        """``seed`` (if given) replaces the file's seed, in a ``steps_from`` reference too. ``"extends": "other.json"``
        (relative to the file) starts from that config's keys but its ``model_version`` (a file that names none gets
        the hash of its own keys). Every key is checked (``validate``) before a ``steps_from`` reference loads data."""
        path = Path(path)
        if seed is not None:
            problem = _range_problem(RANGES["seed"], seed)
            if problem:
                raise ValidationError(f"`seed` given for {path} must be {problem}. Given: {seed!r}.")
        return cls._from_file(path, seed, (), None)

    @classmethod
    def _from_file(cls, path: Path, seed, chain: tuple, named_by: str | None) -> "TrainConfig":
        """``chain``: the resolved files whose ``steps_from`` led here; ``named_by``: who named this file."""
        raw = _read_config(path, named_by, (), origin := {})  # each file's key names checked there, naming it
        if seed is not None:
            raw["seed"] = seed
        cfg = cls(**raw)
        cfg.source = path.parent.resolve() / path.name  # the folder `extends` and `steps_from` are read from
        for key in sorted(set(raw) - {"seed"}):  # an inherited value's type and range: named by its file
            cfg._check_key(key, raw[key], origin[key])
        cfg.validate(path)
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
        return cfg

    def validate(self, where="config"):
        """Raise ValidationError for the first key of the wrong type or out of range (``RANGES``,
        ``CHOICES``, ``NAMES`` and the keys of ``OWN_CHECKS``), then for keys that do not fit
        together, then for what the base encoder cannot take. Reads no data: the base's config only."""
        for f in dataclasses.fields(self):
            self._check_key(f.name, getattr(self, f.name), where)
        for t in self.tasks:
            if t in T.ZERO_SHOT:
                raise ValidationError(f"`tasks` in {where} must not include {t!r}: it is a zero-shot evaluation task.")
            if t not in T.TASKS:
                raise ValidationError(f"`tasks` in {where} entries must be among {list(T.TASKS)}. Given: {t!r}.")
        terms = {"distill_weight": self.distill_weight, "direct_weight": self.direct_weight,
                 "nce_weight": self.nce_weight, "pair_weight": self.pair_weight}
        if self.distill_posts and not any(terms.values()):
            raise ValidationError(f"`distill_posts` in {where} must be >= 0, and needs a distillation term > 0. "
                                  f"Given: distill_posts {self.distill_posts}, {terms}.")
        if self.teacher:
            if self.distill_posts < 2 or not any(terms.values()):
                raise ValidationError(f"`teacher` in {where} needs `distill_posts` >= 2 and a distillation term > 0 "
                                      f"(the teacher is distilled on that stream). Given: distill_posts "
                                      f"{self.distill_posts}, {terms}.")
            if self.distill_pool and self.distill_posts > self.distill_pool:
                raise ValidationError(f"`distill_posts` in {where} must be <= `distill_pool` ({self.distill_pool}): "
                                      f"each step draws that many distinct posts of the pool. Given: "
                                      f"{self.distill_posts}. Fix: raise distill_pool (0: every post) or lower "
                                      "distill_posts.")
        elif self.direct_weight or self.nce_weight or self.pair_weight:
            raise ValidationError(f"`direct_weight`, `nce_weight` and `pair_weight` in {where} need a `teacher`. "
                                  f"Given: direct_weight {self.direct_weight}, nce_weight {self.nce_weight}, "
                                  f"pair_weight {self.pair_weight}.")
        if self.pair_weight and (self.pair_posts < 4 or self.pair_neighbours < 0):
            raise ValidationError(f"`pair_weight` in {where} needs `pair_posts` >= 4 and `pair_neighbours` >= 0. "
                                  f"Given: pair_posts {self.pair_posts}, pair_neighbours {self.pair_neighbours}.")
        if self.task_batches == "mixed" and self.loss != "bce":
            raise ValidationError(f"`task_batches` 'mixed' in {where} needs `loss` 'bce' (a contrastive softmax over "
                                  f"several tasks' label names is not defined here). Given: loss {self.loss!r}.")
        if self.projection_init == "teacher" and not self.teacher:
            raise ValidationError(f"`projection_init` 'teacher' in {where} needs a `teacher`.")
        self._check_matryoshka(where)
        self._check_base(where)

    def _check_key(self, key, value, where):
        """The type and range of one key (see ``validate``)."""
        assert key in RANGES or key in CHOICES or key in NAMES or key in OWN_CHECKS, f"no check for `{key}`"
        default = _default(key)
        if key in RANGES:
            problem = _range_problem(RANGES[key], value)
            if problem:
                raise ValidationError(f"`{key}` in {where} must be {problem}. Given: {value!r}. "
                                      f"Fix: e.g. {default!r} (the default).")
        elif key in CHOICES:
            if not isinstance(value, str) or value not in CHOICES[key]:
                *most, last = map(repr, CHOICES[key])
                raise ValidationError(f"`{key}` in {where} must be {', '.join(most)} or {last}. Given: {value!r}.")
        elif key in NAMES:
            optional, what = NAMES[key]
            if not (isinstance(value, str) and value) and not (value is None and optional):
                fix = "leave it out" if optional else f"e.g. {default!r} (the default)"
                raise ValidationError(f"`{key}` in {where} must be a non-empty string ({what}). Given: {value!r}. "
                                      f"Fix: {fix}.")
        elif key == "model_version":
            if not (isinstance(value, str) and _VERSION.fullmatch(value)):
                fix = re.sub(r"[^A-Za-z0-9._-]+", "-", str(value)).strip("._-") or "postemb-mt50-mine"
                raise ValidationError(
                    f"`model_version` in {where} must be a non-empty string of letters, digits, '.', '_' and '-' "
                    f"that starts with a letter or digit: vector versions add '@<dim>' and '+<precision>' suffixes "
                    f"that are parsed back, and '/' splits store keys. Given: {value!r}. Fix: e.g. {fix!r}.")
        elif key == "tasks":
            if not (isinstance(value, list) and value and all(isinstance(t, str) for t in value)):
                raise ValidationError(f"`tasks` in {where} must be a non-empty list of task names among "
                                      f"{list(T.TASKS)}. Given: {value!r}. Fix: e.g. ['emoji'] for one task.")
            if len(set(value)) < len(value):
                raise ValidationError(f"`tasks` in {where} must name each task once (a task's mixing weight comes "
                                      f"from its data, not from repeats). Given: {value!r}. "
                                      f"Fix: e.g. {list(dict.fromkeys(value))!r}.")
        elif key == "lora_targets":
            ok = isinstance(value, list) and value and all(isinstance(t, str) for t in value)
            if not (ok and set(value) <= set(LORA_TARGETS) and len(set(value)) == len(value)):
                raise ValidationError(f"`lora_targets` in {where} must be a non-empty list of distinct linear layers "
                                      f"of an encoder layer, among {LORA_TARGETS}. Given: {value!r}. "
                                      "Fix: pick from that list, or leave it out (all of them).")
        elif key == "lora_layers" and value is not None:
            ok = isinstance(value, list) and value and all(_is_int(i) and i >= 0 for i in value)
            if not (ok and len(set(value)) == len(value)):
                raise ValidationError(f"`lora_layers` in {where} must be a non-empty list of distinct layer indices "
                                      f">= 0, or left out (all layers). Given: {value!r}.")

    def _check_base(self, where):
        """What the base encoder can take (its config files only: nothing is loaded)."""
        from ..model_dir import resolve

        try:
            md = resolve(self.base)
            hf_file = md.encoder_path and md.encoder_path / "config.json"
            hf = json.loads(hf_file.read_text()) if hf_file and hf_file.is_file() else {}
        except (PostEmbError, OSError, ValueError, KeyError) as exc:
            why = str(exc).split(" Fix: ")[0]  # its own fix may name 'default', which has a projection
            raise ValidationError(f"`base` in {where} must be 'base' or an encoder directory. Given: {self.base!r}, "
                                  f"which could not be resolved: {why} Fix: 'base' (the default), or a directory "
                                  "of an encoder without a projection.") from None
        if md.config.projection_dim or md.encoder_path is None:
            raise ValidationError(f"`base` in {where} must be an encoder without a projection, with its Hugging Face "
                                  f"encoder files (not ONNX only). Given: {self.base!r}. Fix: 'base' (the default).")
        hidden = md.config.hidden_size
        if self.projection_dim > hidden:
            raise ValidationError(f"`projection_dim` in {where} must be <= the base's hidden size ({hidden}: the "
                                  f"projection maps the pooled vector down). Given: {self.projection_dim}. "
                                  f"Fix: e.g. {_default('projection_dim')} (the default).")
        hf = hf if isinstance(hf, dict) else {}
        layers = hf.get("num_hidden_layers")
        positions = read_positions(hf) if _is_int(hf.get("max_position_embeddings")) else None  # less RoBERTa's offset
        if self.lora_layers and _is_int(layers) and max(self.lora_layers) >= layers:
            keep = [i for i in self.lora_layers if i < layers]
            raise ValidationError(f"`lora_layers` in {where} must be layer indices of the base, 0 to {layers - 1} "
                                  f"({layers} layers). Given: {self.lora_layers}. Fix: e.g. {keep or [layers - 1]}, "
                                  "or leave it out (all layers).")
        if _is_int(positions) and self.max_length > positions:
            raise ValidationError(f"`max_length` in {where} must be <= the tokens the base reads ({positions}: "
                                  f"max_position_embeddings, less RoBERTa's or MPNet's offset). Given: "
                                  f"{self.max_length}. Fix: e.g. {_default('max_length')} (the default).")

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


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _range_problem(r: Range, v) -> str:
    """'' if ``v`` fits ``r``, else what it must be: ">= 0 and < 1 (a number; ...)"."""
    ok = _is_int(v) if r.integer else (isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(v))
    if ok and (v > r.low if r.low_open else v >= r.low) and (
            r.high is None or (v < r.high if r.high_open else v <= r.high)):
        return ""
    high = "" if r.high is None else f" and {'<' if r.high_open else '<='} {'2**64' if r.high == 2 ** 64 else r.high}"
    kind = "an integer" if r.integer else "a number"
    return f"{'>' if r.low_open else '>='} {r.low}{high} ({kind}{'; ' + r.why if r.why else ''})"


def _default(key: str):
    f = TrainConfig.__dataclass_fields__[key]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _read_config(path: Path, named_by: str | None, seen: tuple, origin: dict) -> dict:
    """The JSON keys of a config file, ``_comment`` keys dropped, ``extends`` resolved.
    ``named_by``: the key and file that named this one (None: the ``--config`` file itself);
    ``seen``: the resolved files whose ``extends`` led here; ``origin``: filled with each key's file."""
    what = f"{named_by} names {str(path)!r}, which" if named_by else f"`--config` {str(path)!r}"
    objects = []  # every JSON object's (key, value) pairs: json.loads keeps the last of a key given twice, silently
    try:
        raw = json.loads(path.read_text(), object_pairs_hook=lambda pairs: objects.append(pairs) or dict(pairs))
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        fix = " Fix: name a config file by its path relative to the file that names it." if named_by else ""
        raise ValidationError(f"{what} could not be read as JSON: {exc}.{fix}") from None
    if not isinstance(raw, dict):
        raise ValidationError(f"{what} must hold a JSON object of config keys. Given: a {type(raw).__name__}.")
    twice = [k for pairs in objects for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])]
    if twice:
        raise ValidationError(f"`{twice[0]}` in {path} is given twice (JSON keeps only the last). Fix: keep one.")
    raw = {k: v for k, v in raw.items() if not k.startswith("_")}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - known - {"extends"})
    if unknown:
        near = {k: m[0] for k in unknown for m in [difflib.get_close_matches(k, known, 1)] if m}
        raise ValidationError(f"`{path}` has unknown keys {unknown}" + (f" (did you mean {near}?)" if near else "")
                              + f". Known keys: {sorted(known)}.")
    parent = raw.pop("extends", None)
    origin.update(dict.fromkeys(raw, path))
    if parent is None:
        return raw
    if not (isinstance(parent, str) and parent):
        raise ValidationError(f"`extends` in {path} must be a config file's path relative to it, e.g. "
                              f"\"multitask.json\". Given: {parent!r}.")
    ref = (path.parent / parent).resolve()
    chain = seen + (path.resolve(),)
    if ref in chain:
        raise ValidationError(f"`extends` in {path} makes a cycle: {[str(p) for p in chain + (ref,)]}.")
    # every key but model_version: a variant that names none gets the hash of its own keys, never the
    # parent's version (two recipes' vectors under one version would mix in a store)
    inherited = _read_config(ref, f"`extends` in {path}", chain, mine := {})
    inherited = {k: v for k, v in inherited.items() if k != "model_version"}
    origin.update({k: f for k, f in mine.items() if k not in raw and k in inherited})
    for key in ("data", "steps_from"):  # a path means what it meant in the file that gives it: rebased onto this one
        v = inherited.get(key)
        if isinstance(v, str) and v and not Path(v).expanduser().is_absolute():
            inherited[key] = os.path.relpath(ref.parent / v, path.parent.resolve())
    return {**inherited, **raw}


def data_root_of(cfg: TrainConfig) -> Path:
    """The data root: ``data`` relative to the config file (``source``), else ``data_root()``. A relative
    ``data`` whose folder holds no tweeteval/ is refused, naming it read from the working directory too."""
    from ..data import data_root

    given = Path(cfg.data or ".").expanduser()
    if not cfg.data or given.is_absolute() or cfg.source is None:
        return given if cfg.data else data_root()
    root, cwd = cfg.source.parent / given, Path.cwd() / given
    if not (root / "tweeteval").is_dir():
        there = "holds it" if (cwd / "tweeteval").is_dir() else "does not hold it either"
        raise ValidationError(
            f"`data` in {cfg.source} is {cfg.data!r}, read relative to that config file: {root.resolve()} holds no "
            f"tweeteval/ (relative to the working directory, {cwd.resolve()} {there}). Fix: a path relative to the "
            "config file's folder or an absolute one, or leave `data` out (POSTEMB_DATA, else ../shared/data).")
    return root


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
