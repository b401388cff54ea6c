"""The evaluation report: the columns, seed means, the model issue's targets (each with its
paired bootstrap interval) and ``eval.md`` / ``eval.json``. The rows come from
:mod:`postemb_rt.train.evaluate`."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from ..durable import atomic_write
from . import tasks as T
from .evaluate import BOOTSTRAP, COLUMNS, EvalData, EvalSpec, paired_delta


SEED = re.compile(r"^(?P<group>.+)-seed(?P<seed>\d+)(?P<prefix>@\d+)?$")


def seed_means(rows: dict) -> tuple[dict, dict]:
    """Rows ``<name>-seed<N>`` are further training seeds of ``<name>`` (and ``<name>-seed<N>@<k>``
    of the prefix row ``<name>@<k>``): ({name: mean row}, {name: {column: standard deviation}})
    for every name with at least one such row."""
    groups: dict[str, list[str]] = {}
    for name in rows:
        m = SEED.match(name)
        group = m and m["group"] + (m["prefix"] or "")
        if m and group in rows:
            groups.setdefault(group, [group]).append(name)
    means, sds = {}, {}
    for g, members in groups.items():
        means[g] = {"dim": rows[g].get("dim"), "seeds": len(members)}
        sds[g] = {}
        for c in COLUMNS[1:]:
            v = [rows[n][c] for n in members]
            means[g][c], sds[g][c] = float(np.mean(v)), float(np.std(v, ddof=1))
    return means, sds


def _interval(comparisons: list[tuple[str, str, str]], outs, data) -> str:
    """"delta [lo, hi]" for [(column, row x, row y), ...] (see paired_delta); "" without outputs."""
    if outs is None or data is None or any(a not in outs or b not in outs for _, a, b in comparisons):
        return ""
    d, lo, hi = paired_delta([(c, outs[a], outs[b]) for c, a, b in comparisons], data)
    fmt = "+.2f" if comparisons[0][0] == "sts_spearman" else "+.4f"
    return f"{d:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


STS_MAX_DROP = 2.0  # target 3: STS-B dev Spearman at most this many points below base
ZS_COLS = [f"f1_{t}" for t in T.ZERO_SHOT]


def check_targets(rows: dict, main: str, outs: dict | None = None, data: EvalData | None = None) -> list[dict]:
    """The model issue's targets 1-4, for the row ``main`` (the multi-task model). With the
    per-item outputs, each comparison also gets its difference and paired bootstrap 95%
    interval (``ci``: "delta [lo, hi]"; above 0 a significant win, below 0 a loss).
    Target 5 (no inference cost) is checked from the throughput measurement (:func:`speed_target`)."""
    out = []
    m, base = rows.get(main), rows.get("base")
    if m is None or base is None:
        return out
    f = m["f1_zero_shot_mean"]
    others = [n for n in ("base", "base-pca50", "teacher-pca50") if n in rows]
    ci = {f"vs {n}": _interval([(c, main, n) for c in ZS_COLS], outs, data) for n in others}
    missing = [n for n in ("base-pca50", "teacher-pca50") if n not in rows]
    beaten = f >= base["f1_zero_shot_mean"] and all(f > rows[n]["f1_zero_shot_mean"] for n in others[1:])
    met = (None if missing else True) if beaten else False  # rows missing: n/a unless one present is lost to
    out.append({"target": "1. zero-shot mean probe macro-F1 >= base (384-d), > base-PCA-50 and > teacher-PCA-50",
                "met": met, "detail": f"{f:.4f} vs " + ", ".join(f"{n} {rows[n]['f1_zero_shot_mean']:.4f}" for n in others)
                + (f"; rows missing: {missing}" if missing else ""), "ci": ci})
    singles = {t: f"single-{t}" for t in T.TASKS if f"single-{t}" in rows}
    if singles:
        wins = [t for t, n in singles.items() if m[f"auc_{t}"] >= rows[n][f"auc_{t}"]]
        m_mean = float(np.mean([m[f"auc_{t}"] for t in singles]))
        s_mean = float(np.mean([rows[n][f"auc_{t}"] for t, n in singles.items()]))
        ci = {t: _interval([(f"auc_{t}", main, n)], outs, data) for t, n in singles.items()}
        ci["mean"] = _interval([(f"auc_{t}", main, n) for t, n in singles.items()], outs, data)
        out.append({"target": "2. multi-task >= single-task on >= 4 of 5 tasks and on their mean",
                    "met": len(singles) == 5 and len(wins) >= 4 and m_mean >= s_mean,
                    "detail": f"wins {len(wins)}/{len(singles)} ({wins}); mean AUC {m_mean:.4f} vs single {s_mean:.4f}",
                    "ci": ci})
    else:
        out.append({"target": "2. positive transfer", "met": None, "detail": "no single-task rows evaluated"})
    d = m["sts_spearman"] - base["sts_spearman"]
    out.append({"target": f"3. STS-B dev Spearman no more than {STS_MAX_DROP:g} points below base",
                "met": d >= -STS_MAX_DROP,
                "detail": f"{m['sts_spearman']:.2f} vs base {base['sts_spearman']:.2f} ({d:+.2f})",
                "ci": {"vs base": _interval([("sts_spearman", main, "base")], outs, data)}})
    if "teacher" in rows:
        tr = rows["teacher"]
        wins = [t for t in T.TASKS if m[f"auc_{t}"] >= tr[f"auc_{t}"]]
        out.append({"target": f"4. trained-task AUC >= the {tr['dim']}-d teacher's on >= 4 of 5 tasks",
                    "met": len(wins) >= 4, "detail": f"wins {len(wins)}/5 ({wins})",
                    "ci": {t: _interval([(f"auc_{t}", main, "teacher")], outs, data) for t in T.TASKS}})
    else:
        out.append({"target": "4. beats the teacher", "met": None, "detail": "no teacher row evaluated"})
    for t in out:  # drop empty intervals (no per-item outputs)
        if "ci" in t:
            t["ci"] = {k: v for k, v in t["ci"].items() if v}
    return out


def speed_target(tp: dict) -> dict:
    """Target 5 from :func:`throughput`: the model runs at the base's speed (within 5%, the
    run-to-run noise of an interleaved best-of-2 on a shared 2-core machine)."""
    r = tp["model_posts_per_s"] / tp["base_posts_per_s"]
    return {"target": "5. no inference cost: posts/s within 5% of base (same encoder, 6 layers x 384)",
            "met": r >= 0.95, "detail": f"{tp['model_posts_per_s']} vs base {tp['base_posts_per_s']} posts/s ({r:.3f}x)"}


def _table(title: str, cols: list[str], rows: dict, sds: dict | None = None) -> list[str]:
    lines = [f"## {title}", "", "| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        cells = []
        for c in cols:
            if c in ("dim", "seeds"):
                cells.append(str(r.get(c, "")))
                continue
            fmt = ".2f" if c == "sts_spearman" else ".4f"
            sd = (sds or {}).get(name, {}).get(c)
            cells.append(f"{r[c]:{fmt}}" + (f" ± {sd:{fmt}}" if sd is not None else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


PREFIX_COLS = ["dim", "auc_mean", "f1_zero_shot_mean", "knn_zero_shot_mean", "sts_spearman", "p10_emoji",
               "p10_topic"]
PCA = re.compile(r"^(base|teacher)-pca(?P<k>\d+)$")


def prefix_lines(rows: dict, outs: dict | None = None, data: EvalData | None = None) -> list[str]:
    """The nested-dimension section: for each prefix k of a row ``<name>@<k>``, that prefix's rows
    (nested, or the control: truncated without nested training) beside ``base-pca<k>``, and each
    prefix row minus ``base-pca<k>`` (and minus ``base-pca50``) on zero-shot F1 and STS-B with its
    paired bootstrap interval. Empty without prefix rows."""
    ks = sorted({r["dim"] for r in rows.values() if "prefix_of" in r}, reverse=True)
    if not ks:
        return []
    lines = ["## Nested dimensions (prefixes)", "",
             "`NAME@K`: the first K components of NAME, re-normalised; *nested* where NAME was trained for K "
             "(`matryoshka_dims`), *control* where it was not (truncated without nested training). `base-pcaK`: "
             "the base's top K principal axes.", ""]
    for k in ks:
        names = [n for n, r in rows.items() if r.get("dim") == k and ("prefix_of" in r or PCA.match(n))]
        table = {(f"{n} ({'nested' if rows[n]['nested'] else 'control'})" if "prefix_of" in rows[n] else n): rows[n]
                 for n in names}
        lines += ["#" + line if i == 0 else line for i, line in enumerate(_table(f"{k} dims", PREFIX_COLS, table))]
        for n in names:
            if "prefix_of" not in rows[n]:
                continue
            for ref in dict.fromkeys((f"base-pca{k}", "base-pca50")):
                if ref not in rows:
                    continue
                zs = _interval([(c, n, ref) for c in ZS_COLS], outs, data)
                sts = _interval([("sts_spearman", n, ref)], outs, data)
                lines.append(f"- `{n}` minus `{ref}`: zero-shot F1 {zs or 'n/a'}; STS-B {sts or 'n/a'}")
        lines.append("")
    return lines


def _target_lines(targets: list[dict]) -> list[str]:
    lines = []
    for t in targets:
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "MISSED")
        lines.append(f"- {t['target']}: **{mark}** ({t['detail']})")
        if t.get("ci"):
            lines.append("  - difference [95% interval]: " + "; ".join(f"{k}: {v}" for k, v in t["ci"].items()))
    return lines


def write_report(out: Path, rows: dict, main: str, spec: EvalSpec, extra: dict, outs: dict | None = None,
                 data: EvalData | None = None) -> tuple[Path, Path]:
    """reports: ``eval.json`` (everything) and ``eval.md`` (tables + targets, with paired
    bootstrap intervals where ``outs``/``data`` are given, and seed means where rows
    ``<name>-seed<N>`` exist)."""
    targets = check_targets(rows, main, outs, data)
    if extra.get("throughput"):
        targets.append(speed_target(extra["throughput"]))
    means, sds = seed_means(rows)
    seed_targets = check_targets({**rows, **means}, main) if main in means else []
    report = {"main_model": main, "spec": dataclasses.asdict(spec), "bootstrap": BOOTSTRAP, "rows": rows,
              "targets": targets, "seed_means": means, "seed_sds": sds, "seed_targets": seed_targets,
              **({"dropped_as_seen": data.dropped} if data is not None else {}), **extra}
    jp, mp = out / "eval.json", out / "eval.md"
    atomic_write(jp, json.dumps(report, indent=2, default=float) + "\n")  # a kill leaves the old report whole
    lines = [f"# Evaluation: `{main}`", "",
             "AUC / F1 / kNN / P@10 in [0, 1]; STS-B Spearman x100. Built by `postemb eval`; "
             "definitions in `postemb_rt/train/evaluate.py`.", ""]
    n_auc = 2 + len(T.TASKS)  # dim, the AUCs, their mean
    lines += _table("Trained tasks: held-out pair ROC-AUC", COLUMNS[:n_auc], rows)
    lines += _table("Zero-shot, STS-B dev and retrieval", ["dim"] + COLUMNS[n_auc:], rows)
    if means:
        lines += ["## Training seeds", "",
                  "Rows `<name>-seed<N>` are the same recipe with another training seed: mean ± standard "
                  "deviation over the seeds (the training noise; the intervals under Targets are the "
                  "evaluation noise).", ""]
        lines += _table("Seed means: trained tasks", ["seeds"] + COLUMNS[1:n_auc], means, sds)[2:]
        lines += _table("Seed means: zero-shot, STS-B, retrieval", ["seeds"] + COLUMNS[n_auc:], means, sds)[2:]
    lines += prefix_lines(rows, outs, data)
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
    if outs is not None:
        lines += [f"Intervals: paired bootstrap ({BOOTSTRAP} resamples of the held-out items, the same for both "
                  "rows) of the difference, main model minus the other row; entirely above 0: a significant "
                  "win, entirely below: a significant loss, spanning 0: within evaluation noise.", ""]
    lines += _target_lines(targets)
    if seed_targets:
        lines += ["", f"On the means over {means[main]['seeds']} training seeds (each row with seed rows "
                  "replaced by their mean):", ""]
        lines += _target_lines(seed_targets)
    if data is not None and data.dropped:
        lines += ["", "Held-out items dropped because the rows were fitted on them (case and spaces ignored; "
                  f"`--keep-seen` keeps them): `{json.dumps(data.dropped)}`"]
    lines += ["", f"Spec: `{json.dumps(dataclasses.asdict(spec))}`", ""]
    atomic_write(mp, "\n".join(lines))
    return jp, mp
