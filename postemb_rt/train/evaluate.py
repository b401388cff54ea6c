"""Offline evaluation: one row per model, one column per metric, and the issue's 4 targets.

Metrics (embeddings always come from the runtime, ``Encoder.encode``, unit rows):

- ``auc_<task>``: ROC-AUC of cos(a, b) on held-out pairs built like the training pairs
  (``tasks.py``) from the *test* splits (STS: STS-B dev, score >= 4 vs <= 1);
- ``f1_<task>`` / ``knn_<task>`` for the zero-shot tasks (sentiment, hate, offensive):
  macro-F1 of a logistic-regression probe (class_weight='balanced') fitted on frozen
  embeddings of the train split (sentiment: val, it has no train split), and accuracy of
  a cosine kNN (k = 10, majority vote) over the same fit set, both on test;
- ``sts_spearman``: Spearman (x100) of cosine vs gold score on all of STS-B dev;
- ``p10_emoji`` / ``p10_topic``: precision@10 of same-label neighbours among test posts.

The ``base-pca50`` row is the base's 384-d embeddings reduced by PCA (fitted on train
posts) and re-normalised: the dimension-matched baseline. Sizes and seeds: :class:`EvalSpec`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as D
from . import tasks as T

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSpec:
    """Subsample sizes (None = all) and the seed; recorded in the report."""

    seed: int = 0
    auc_anchors: int = 1000  # per task (each gives one positive and one negative pair); sts: all dev pairs
    zs_fit: int = 2000  # probe/kNN fit posts per zero-shot task
    zs_test: int = 2000  # test posts per zero-shot task
    retrieval_posts: int = 2000  # emoji test posts (topic: all test posts, 1,249)
    pca_posts: int = 2000  # train posts the base-PCA-50 baseline is fitted on
    pca_dim: int = 50
    knn_k: int = 10
    batch_size: int = 64

    def key(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def _sub(rng, n_total, n):
    idx = rng.permutation(n_total)
    return np.sort(idx[:n]) if n is not None else np.arange(n_total)


@dataclass
class EvalData:
    """Every text set the metrics need, built once (deterministic given the spec)."""

    pairs: dict  # task -> list[Pair]
    zs: dict  # task -> (fit texts, fit labels, test texts, test labels)
    sts: tuple  # (a, b, scores)
    retrieval: dict  # name -> (texts, labels)
    pca_posts: list

    def texts(self) -> list[str]:
        out = set()
        for ps in self.pairs.values():
            for p in ps:
                out.update((p.a, p.b))
        for ft, _, tt, _ in self.zs.values():
            out.update(ft)
            out.update(tt)
        out.update(self.sts[0])
        out.update(self.sts[1])
        for t, _ in self.retrieval.values():
            out.update(t)
        return sorted(out)

    def texts_with_pca(self) -> list[str]:
        return sorted(set(self.texts()) | set(self.pca_posts))


def build_eval_data(root: Path, spec: EvalSpec) -> EvalData:
    sd = T.load_split(root, "test")
    pairs = {}
    for i, t in enumerate(T.TASKS):
        rng = np.random.default_rng([spec.seed, 10 + i])
        pairs[t] = T.build_task(sd, t).heldout(rng, None if t == "sts" else spec.auc_anchors)
    zs = {}
    for i, t in enumerate(T.ZERO_SHOT):
        fit_split = "train" if (root / "tweeteval" / t / "train_text.txt").exists() else "val"
        fit, test = D.read_task(root, t, fit_split, strict=False), D.read_task(root, t, "test", strict=False)
        rng = np.random.default_rng([spec.seed, 20 + i])
        fi, ti = _sub(rng, len(fit), spec.zs_fit), _sub(rng, len(test), spec.zs_test)
        zs[t] = ([fit.texts[j] for j in fi], np.array(fit.labels)[fi],
                 [test.texts[j] for j in ti], np.array(test.labels)[ti])
    a, b, s = D.read_sts(root / "stsb" / "stsb-en-dev.csv", strict=False)
    rng = np.random.default_rng([spec.seed, 30])
    ei = _sub(rng, len(sd.emoji), spec.retrieval_posts)
    retrieval = {"emoji": ([sd.emoji.texts[j] for j in ei], np.array(sd.emoji.labels)[ei]),
                 "topic": (list(sd.topic.texts), np.array(sd.topic.labels))}
    tr = T.load_split(root, "train")
    pool = tr.emoji.texts + tr.emotion.texts + tr.topic.texts
    rng = np.random.default_rng([spec.seed, 40])
    pca_posts = [pool[j] for j in _sub(rng, len(pool), spec.pca_posts)]
    return EvalData(pairs, zs, (a, b, np.array(s)), retrieval, pca_posts)


def _auc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def metrics(emb, data: EvalData, spec: EvalSpec) -> dict:
    """emb: callable list[str] -> float32 (n, d) unit rows (a lookup into precomputed ones)."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    row = {}
    for t, ps in data.pairs.items():
        a, b = emb([p.a for p in ps]), emb([p.b for p in ps])
        row[f"auc_{t}"] = _auc((a * b).sum(1), [p.label for p in ps])
    row["auc_mean"] = float(np.mean([row[f"auc_{t}"] for t in data.pairs]))
    for t, (ft, fy, tt, ty) in data.zs.items():
        xf, xt = emb(ft), emb(tt)
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit(xf, fy)
        row[f"f1_{t}"] = float(f1_score(ty, clf.predict(xt), average="macro"))
        nn_idx = np.argsort(-(xt @ xf.T), axis=1)[:, :spec.knn_k]
        votes = fy[nn_idx]
        pred = np.array([np.bincount(v, minlength=fy.max() + 1).argmax() for v in votes])
        row[f"knn_{t}"] = float((pred == ty).mean())
    row["f1_zero_shot_mean"] = float(np.mean([row[f"f1_{t}"] for t in data.zs]))
    row["knn_zero_shot_mean"] = float(np.mean([row[f"knn_{t}"] for t in data.zs]))
    a, b, s = data.sts
    row["sts_spearman"] = float(100 * spearmanr((emb(a) * emb(b)).sum(1), s).statistic)
    for name, (texts, labels) in data.retrieval.items():
        x = emb(texts)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        top = np.argsort(-sim, axis=1)[:, :10]
        row[f"p10_{name}"] = float((labels[top] == labels[:, None]).mean())
    return row


def embed_all(model: str, texts: list[str], backend: str, spec: EvalSpec) -> tuple[dict, dict]:
    """({text: row}, info) for every text, through the runtime."""
    from ..encoder import Encoder

    enc = Encoder.from_pretrained(model, backend=backend, device="cpu")
    t0 = time.perf_counter()
    x = enc.encode(texts, batch_size=spec.batch_size)
    info = {"model_version": enc.model_version, "dim": enc.dim, "backend": enc.backend.name,
            "embed_seconds": round(time.perf_counter() - t0, 1), "texts": len(texts)}
    enc.close()
    return dict(zip(texts, x)), info


def _lookup(table):
    return lambda texts: np.stack([table[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)


def pca_table(table: dict, fit_texts: list[str], dim: int) -> dict:
    """Project every row onto the top ``dim`` principal axes of the fit rows; re-normalise."""
    x = np.stack([table[t] for t in fit_texts]).astype(np.float64)
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    w = vt[:dim]
    keys = list(table)
    y = (np.stack([table[k] for k in keys]) - mean) @ w.T
    y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
    return dict(zip(keys, y.astype(np.float32)))


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


def evaluate_rows(models: list[tuple[str, str]], root: Path, out: Path, spec: EvalSpec, backend: str = "auto",
                  baselines: bool = True, progress=print) -> dict:
    """Rows for base, base-pca50 (if ``baselines``) and each (name, model); each row is
    cached in ``out/rows/<name>.json`` keyed by the model fingerprint and the spec."""
    from ..model_dir import resolve

    data = build_eval_data(root, spec)
    texts = data.texts()
    progress(f"evaluation texts: {len(texts)} unique")
    rows_dir = out / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    todo = ([("base", "base")] if baselines else []) + list(models)
    rows = {}
    for name, model in todo:
        key = f"{resolve(model).fingerprint}-{spec.key()}-{root}"
        cache = rows_dir / f"{name}.json"
        names = [name, "base-pca50"] if name == "base" and baselines else [name]
        if cache.exists():
            cached = json.loads(cache.read_text())
            if cached.get("key") == key:
                rows.update(cached["rows"])
                progress(f"{name}: cached")
                continue
        t0 = time.perf_counter()
        need = data.texts_with_pca() if name == "base" and baselines else texts
        table, info = embed_all(model, need, backend, spec)
        got = {name: {**info, **model_meta(model), **metrics(_lookup(table), data, spec)}}
        if name == "base" and baselines:
            pt = pca_table(table, data.pca_posts, spec.pca_dim)
            got["base-pca50"] = {**info, "dim": spec.pca_dim, **metrics(_lookup(pt), data, spec)}
        cache.write_text(json.dumps({"key": key, "rows": got}, indent=2) + "\n")
        rows.update(got)
        progress(f"{names}: done in {time.perf_counter() - t0:.0f}s (embed {info['embed_seconds']}s)")
    return rows


COLUMNS = (["dim"] + [f"auc_{t}" for t in T.TASKS] + ["auc_mean"] + [f"f1_{t}" for t in T.ZERO_SHOT]
           + ["f1_zero_shot_mean"] + [f"knn_{t}" for t in T.ZERO_SHOT] + ["knn_zero_shot_mean", "sts_spearman",
                                                                          "p10_emoji", "p10_topic"])


def check_targets(rows: dict, main: str) -> list[dict]:
    """The issue's 4 targets, for the row ``main`` (the multi-task model)."""
    out = []
    m, base, pca = rows.get(main), rows.get("base"), rows.get("base-pca50")
    if m is None or base is None:
        return out
    lost = [t for t in T.TASKS if m[f"auc_{t}"] <= base[f"auc_{t}"]]
    out.append({"target": "1. multi-task beats base on every trained task's AUC", "met": not lost,
                "detail": "all 5 tasks" if not lost else f"not on: {lost}"})
    singles = {t: rows[f"single-{t}"] for t in T.TASKS if f"single-{t}" in rows}
    if singles:
        wins = [t for t in singles if m[f"auc_{t}"] >= singles[t][f"auc_{t}"]]
        m_mean = float(np.mean([m[f"auc_{t}"] for t in singles]))
        s_mean = float(np.mean([singles[t][f"auc_{t}"] for t in singles]))
        out.append({"target": "2. multi-task >= single-task on >= 4 of 5 tasks and on their mean",
                    "met": len(singles) == 5 and len(wins) >= 4 and m_mean >= s_mean,
                    "detail": f"wins {len(wins)}/{len(singles)} ({wins}); mean AUC {m_mean:.4f} vs single {s_mean:.4f}"})
    else:
        out.append({"target": "2. positive transfer", "met": None, "detail": "no single-task rows evaluated"})
    if pca is not None:
        f = m["f1_zero_shot_mean"]
        out.append({"target": "3. zero-shot mean probe macro-F1 >= base (384-d) and > base-PCA-50",
                    "met": f >= base["f1_zero_shot_mean"] and f > pca["f1_zero_shot_mean"],
                    "detail": f"{f:.4f} vs base {base['f1_zero_shot_mean']:.4f}, base-PCA-50 {pca['f1_zero_shot_mean']:.4f}"})
    d = m["sts_spearman"] - base["sts_spearman"]
    out.append({"target": "4. STS-B dev Spearman no more than 3 points below base", "met": d >= -3.0,
                "detail": f"{m['sts_spearman']:.2f} vs base {base['sts_spearman']:.2f} ({d:+.2f})"})
    return out


def write_report(out: Path, rows: dict, main: str, spec: EvalSpec, extra: dict) -> tuple[Path, Path]:
    """reports: ``eval.json`` (everything) and ``eval.md`` (tables + targets)."""
    targets = check_targets(rows, main)
    report = {"main_model": main, "spec": dataclasses.asdict(spec), "rows": rows, "targets": targets, **extra}
    jp, mp = out / "eval.json", out / "eval.md"
    jp.write_text(json.dumps(report, indent=2, default=float) + "\n")
    lines = [f"# Evaluation: `{main}`", "",
             "AUC / F1 / kNN / P@10 in [0, 1]; STS-B Spearman x100. Built by `postemb eval`; "
             "definitions in `postemb_rt/train/evaluate.py`.", ""]
    n_auc = 2 + len(T.TASKS)  # dim, the AUCs, their mean
    for title, cols in (("Trained tasks: held-out pair ROC-AUC", COLUMNS[:n_auc]),
                        ("Zero-shot, STS-B dev and retrieval", ["dim"] + COLUMNS[n_auc:])):
        lines += [f"## {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, r in rows.items():
            cells = [str(r.get(c, "")) if c == "dim" else (f"{r[c]:.2f}" if c == "sts_spearman" else f"{r[c]:.4f}")
                     for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Cost", "", "| model | train s | trained params | artefact MB | eval embed s |", "|---|---|---|---|---|"]
    for name, r in rows.items():
        ab = r.get("artefact_bytes")
        lines.append(f"| {name} | {r.get('train_seconds', '')} | {r.get('trained_parameters', '')} | "
                     f"{'' if ab is None else f'{ab / 1e6:.2f}'} | {r.get('embed_seconds', '')} |")
    lines.append("")
    if extra.get("throughput"):
        tp = extra["throughput"]
        lines += ["## Throughput through the runtime", "",
                  f"{tp['posts']} short posts, backend {tp['backend']}: {main} ({tp['model_dim']}-d) "
                  f"{tp['model_posts_per_s']} posts/s, base ({tp['base_dim']}-d) {tp['base_posts_per_s']} posts/s "
                  "(best of 2, interleaved).", ""]
    lines += ["## Targets", ""]
    for t in targets:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        lines.append(f"- {t['target']}: **{mark}** ({t['detail']})")
    lines += ["", f"Spec: `{json.dumps(dataclasses.asdict(spec))}`", ""]
    mp.write_text("\n".join(lines))
    return jp, mp
