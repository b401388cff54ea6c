"""The evaluation's rows: each model embedded once through the runtime, its derived rows
(``base-pca<k>``, ``teacher-pca<k>``, prefixes ``<name>@<k>``) and the per-row cache in
``OUT/rows/``; plus the throughput check. The metrics and the data: :mod:`postemb_rt.train.evaluate`."""
from __future__ import annotations

import json
import re
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from ..durable import atomic_write
from .evaluate import EvalData, EvalSpec, _lookup, build_eval_data, metrics_from, outputs, pca_tables, prefix_table


PREFIX_CHECK_TEXTS = 32  # texts on which each declared prefix is checked against the served truncate_dim


def embed_all(model: str, texts: list[str], backend: str, spec: EvalSpec, declared=()) -> tuple[dict, dict]:
    """({text: row}, info) for every text, through the runtime. For each ``declared`` prefix k,
    the first texts are also encoded with ``truncate_dim=k``: the served vectors must be the
    evaluation's :func:`prefix_table` rows (|diff| <= 1e-5), so a prefix row scores what is served."""
    from ..encoder import Encoder

    enc = Encoder.from_pretrained(model, backend=backend, device="cpu")
    t0 = time.perf_counter()
    # the longest step of an eval (every text of every row): a bar on a terminal, else encode's rule (the logger)
    x = enc.encode(texts, batch_size=spec.batch_size, show_progress_bar=True if sys.stderr.isatty() else None)
    info = {"model_version": enc.model_version, "dim": enc.dim, "backend": enc.backend.name,
            "embed_seconds": round(time.perf_counter() - t0, 1), "texts": len(texts)}
    table = dict(zip(texts, x))
    sample = texts[:PREFIX_CHECK_TEXTS]
    for k in declared:
        served = enc.encode(sample, batch_size=spec.batch_size, truncate_dim=k)
        ours = np.stack([r for r in prefix_table({t: table[t] for t in sample}, k).values()])
        if served.shape != ours.shape or not np.allclose(served, ours, atol=1e-5):
            raise RuntimeError(f"{model}: encode(truncate_dim={k}) differs from the first {k} components "
                               "re-normalised; the prefix rows would not score what is served.")
    enc.close()
    return table, info


def check_row_names(models: list[tuple[str, str]]) -> None:
    """Refuse, before any work, a ``--model`` row name that would replace another row (a baseline's,
    or another ``--model``'s: rows and their cache files are keyed by name) or that is no file name
    (``rows/<name>.json``; '@' marks the prefix rows ``<name>@<k>``)."""
    from ..errors import ValidationError

    seen = set()
    for name, model in models:
        fix = f"Fix: name the row, e.g. --model mine={model}."
        # NAME-seed<N> is a training seed of the row NAME (report.seed_means): a baseline's would be averaged into it
        if re.fullmatch(r"(base|teacher)(-pca\d+)?(-seed\d+)?", name):
            raise ValidationError(f"`--model` row name {name!r} is the baseline's (rows base, base-pca<k>, teacher, "
                                  f"teacher-pca<k>; the base is always evaluated; NAME-seed<N> is a seed of NAME). "
                                  f"Given: {name}={model}. {fix}")
        if not name or name.startswith(".") or any(c in name for c in "/\\@"):
            raise ValidationError(f"`--model` row name {name!r} must be a file name: not starting with '.', no '/', "
                                  f"'@' (which marks the prefix rows NAME@K) or '\\'. Given: {name}={model}. {fix}")
        if name in seen:
            raise ValidationError(f"`--model` row name {name!r} is given twice: the second row would replace the "
                                  f"first. Given: {name}={model}. Fix: one name per row.")
        seen.add(name)


def pca_dims(spec: "EvalSpec", prefixes) -> list[int]:
    """The base-PCA (and teacher-PCA) rows to make: ``spec.pca_dim`` and every prefix, descending."""
    return sorted({spec.pca_dim, *prefixes}, reverse=True)


def model_prefixes(name: str, model: str, prefixes=()) -> tuple[list[int], list[int]]:
    """(every prefix k to evaluate for ``model``, descending; the ones it declares in its
    ``postemb.json`` ``matryoshka_dims``). ``prefixes`` (``postemb eval --prefixes``) adds the
    control rows: each must be below the model's dim."""
    from ..errors import ValidationError
    from ..model_dir import resolve

    cfg = resolve(model).config
    declared = sorted(cfg.matryoshka_dims or (), reverse=True)
    bad = [k for k in prefixes if not 0 < k < cfg.dim]
    if bad:
        raise ValidationError(f"`--prefixes` must be between 1 and the dim of every --model minus 1; `{name}` is "
                              f"{cfg.dim}-d. Given: {bad}. Fix: drop them, or leave that model out.")
    return sorted({*declared, *prefixes}, reverse=True), declared


def model_meta(model: str) -> dict:
    """Training time, trained parameters and artefact size from the model directory, if trained here."""
    from ..model_dir import resolve
    from .trainer import SUMMARY_FILE

    md = resolve(model)
    p = md.path / SUMMARY_FILE
    if not p.exists():
        return {}
    s = json.loads(p.read_text())
    return {k: s.get(k) for k in ("train_seconds", "trained_parameters", "artefact_bytes", "pairs_seen")}


def throughput(model: str, backend: str, posts: list[str], repeats: int = 2) -> dict:
    """posts/s of ``model`` and of the base through the runtime, same backend, same posts;
    best of ``repeats`` after a warm-up, interleaved so both see the same machine load."""
    from ..encoder import Encoder

    encs = {"model": Encoder.from_pretrained(model, backend=backend, device="cpu"),
            "base": Encoder.from_pretrained("base", backend=backend, device="cpu")}
    best = {k: 0.0 for k in encs}
    for e in encs.values():
        e.encode(posts[:64])
    for _ in range(repeats):
        for k, e in encs.items():
            t0 = time.perf_counter()
            e.encode(posts)
            best[k] = max(best[k], len(posts) / (time.perf_counter() - t0))
    out = {"posts": len(posts), "backend": encs["model"].backend.name,
           "model_posts_per_s": round(best["model"], 1), "base_posts_per_s": round(best["base"], 1),
           "model_dim": encs["model"].dim, "base_dim": encs["base"].dim}
    for e in encs.values():
        e.close()
    return out


def _save_outputs(path: Path, out: dict) -> None:
    atomic_write(path, lambda tmp: np.savez_compressed(tmp, **out))


def _cached_rows(rows_dir: Path, cache: Path, names: list[str], key: str) -> tuple[dict, dict] | None:
    """(rows, per-item outputs of ``names``) from ``cache`` and ``rows_dir/<name>.npz`` if
    all exist, can be read and the cache was written under ``key``; else None (computed again:
    a cache file that cannot be read, e.g. cut short by an older version's kill, is no error)."""
    if not (cache.exists() and all((rows_dir / f"{n}.npz").exists() for n in names)):
        return None
    try:
        cached = json.loads(cache.read_text())
        if not (isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("rows"), dict)):
            return None
        outs = {}
        for n in names:
            with np.load(rows_dir / f"{n}.npz", allow_pickle=False) as z:
                outs[n] = dict(z)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # ValueError: bad JSON or npz contents
        return None
    return cached["rows"], outs


def _teacher_rows(teacher: str, data: EvalData, spec: EvalSpec, rows_dir: Path, progress,
                  dims=None) -> tuple[dict, dict]:
    """Rows ``teacher`` (its own dim) and ``teacher-pca<k>`` for each k of ``dims`` (default
    ``spec.pca_dim``; PCA fitted on the same train posts as base-pca<k>), embedded by the
    teacher's embedder (``teacher.embed_cached``)."""
    from . import teacher as TT

    dims = dims or [spec.pca_dim]
    key = f"{TT.fingerprint(TT.resolve(teacher))}-{spec.key()}-{data.digest}-pca{dims}"
    cache = rows_dir / "teacher.json"
    names = ["teacher"] + [f"teacher-pca{k}" for k in dims]
    hit = _cached_rows(rows_dir, cache, names, key)
    if hit is not None:
        progress("teacher: cached")
        return hit
    texts = data.texts_with_pca()
    x, info = TT.embed_cached(teacher, texts, progress=progress)
    table = dict(zip(texts, x))
    outs = {"teacher": outputs(_lookup(table), data, spec)}
    for k, t in pca_tables(table, data.pca_posts, dims).items():
        outs[f"teacher-pca{k}"] = outputs(_lookup(t), data, spec)
    meta = {"model_version": teacher, "backend": "sentence-transformers (bf16 matmuls)",
            "embed_seconds": info["seconds"], "texts": len(texts)}
    rows = {"teacher": {**meta, "dim": info["dim"], **metrics_from(outs["teacher"], data)}}
    rows.update({f"teacher-pca{k}": {**meta, "dim": k, **metrics_from(outs[f"teacher-pca{k}"], data)} for k in dims})
    for n, o in outs.items():
        _save_outputs(rows_dir / f"{n}.npz", o)
    atomic_write(cache, json.dumps({"key": key, "rows": rows}, indent=2) + "\n")
    return rows, outs


def evaluate_rows(models: list[tuple[str, str]], root: Path, out: Path, spec: EvalSpec, backend: str = "auto",
                  baselines: bool = True, progress=print, teacher: str | None = None,
                  prefixes=()) -> tuple[dict, dict, EvalData]:
    """(rows, per-item outputs, the evaluation data) for base and base-pca<k> (if ``baselines``),
    teacher and teacher-pca<k> (if ``teacher``) and each (name, model), with ``<name>@<k>``
    for every prefix k the model declares or ``prefixes`` asks for (see the module docstring);
    each model's rows are cached in ``out/rows/<name>.json`` (+ ``.npz``, per-item outputs)
    keyed by the model fingerprint, the backend asked for, the spec, the evaluation data's content
    (``EvalData.digest``) and its prefixes."""
    from ..model_dir import resolve

    check_row_names(models)
    plan = {name: model_prefixes(name, model, prefixes) for name, model in models}
    dims = pca_dims(spec, [k for ks, _ in plan.values() for k in ks])
    data = build_eval_data(root, spec)
    texts = data.texts()
    progress(f"evaluation texts: {len(texts)} unique")
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    todo = ([("base", "base")] if baselines else []) + list(models)
    rows, outs = {}, {}
    for name, model in todo:
        with_pca = name == "base" and baselines
        ks, declared = ([], []) if with_pca else plan[name]
        names = [name] + ([f"base-pca{k}" for k in dims] if with_pca else [f"{name}@{k}" for k in ks])
        # the backend asked for: rows computed on another (each row says which ran) never answer for it
        key = f"{resolve(model).fingerprint}-{backend}-{spec.key()}-{data.digest}-{names}"
        cache = rows_dir / f"{name}.json"
        hit = _cached_rows(rows_dir, cache, names, key)
        if hit is not None:
            rows.update(hit[0])
            outs.update(hit[1])
            progress(f"{name}: cached")
            continue
        t0 = time.perf_counter()
        need = data.texts_with_pca() if with_pca else texts
        table, info = embed_all(model, need, backend, spec, declared)
        got_out = {name: outputs(_lookup(table), data, spec)}
        got = {name: {**info, **model_meta(model), **metrics_from(got_out[name], data)}}
        derived = pca_tables(table, data.pca_posts, dims) if with_pca else {k: prefix_table(table, k) for k in ks}
        for k, t in derived.items():
            n = f"base-pca{k}" if with_pca else f"{name}@{k}"
            got_out[n] = outputs(_lookup(t), data, spec)
            # prefix rows: "nested" true for a prefix the model was trained for, false for the control
            extra = {} if with_pca else {"prefix_of": name, "nested": k in declared}
            got[n] = {**info, "dim": k, **extra, **metrics_from(got_out[n], data)}
        for n, o in got_out.items():
            _save_outputs(rows_dir / f"{n}.npz", o)
        atomic_write(cache, json.dumps({"key": key, "rows": got}, indent=2) + "\n")
        rows.update(got)
        outs.update(got_out)
        progress(f"{names}: done in {time.perf_counter() - t0:.0f}s (embed {info['embed_seconds']}s)")
    if teacher:
        got, got_out = _teacher_rows(teacher, data, spec, rows_dir, progress, dims)
        rows.update(got)
        outs.update(got_out)
    return rows, outs, data
