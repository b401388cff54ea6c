"""Eval smoke test on the tiny data, through the CLI."""
import dataclasses
import json
import re

import pytest

from postemb_rt.cli import main
from postemb_rt.train import evaluate as E


@dataclasses.dataclass(frozen=True)
class TwoCs(E.EvalSpec):
    probe_cs: tuple = (0.1, 1.0)


@pytest.fixture
def two_cs(monkeypatch):
    """The probe's C chosen by cross-validation from 2 values, not 4: these tests check the rows, their cache and
    the report, not the grid (its fits, 20 per row and zero-shot task, were most of their time)."""
    monkeypatch.setattr(E, "EvalSpec", TwoCs)


def test_eval_command_writes_report_with_all_rows(smoke_model, tiny_data, tmp_path, capsys, two_cs):
    model, _ = smoke_model
    out = tmp_path / "reports"
    rc = main(["eval", "--model", f"multitask={model}", "--model", f"single-emoji={model}", "--out", str(out),
               "--data", str(tiny_data), "--backend", "torch", "--pca-posts", "40", "--throughput-posts", "16",
               "--teacher", "base"])
    assert rc == 0
    report = json.loads((out / "eval.json").read_text())
    assert set(report["rows"]) == {"base", "base-pca50", "teacher", "teacher-pca50", "multitask", "single-emoji"}
    for name, row in report["rows"].items():
        for col in E.COLUMNS[1:]:
            lo, hi = (-100, 100) if col == "sts_spearman" else (0, 1)
            assert lo <= row[col] <= hi, (name, col)
    assert report["rows"]["base"]["dim"] == 384 and report["rows"]["base-pca50"]["dim"] == 50
    assert report["rows"]["multitask"]["dim"] == 50 and report["rows"]["multitask"]["trained_parameters"] > 0
    assert report["throughput"]["model_dim"] == 50 and report["throughput"]["model_posts_per_s"] > 0
    assert report["rows"]["teacher"]["dim"] == 384 and report["rows"]["teacher-pca50"]["dim"] == 50
    # the base as its own teacher: the teacher row (sentence-transformers, bf16 matmuls) ~ the base row
    assert abs(report["rows"]["teacher"]["sts_spearman"] - report["rows"]["base"]["sts_spearman"]) < 1.0
    assert [t["target"][:2] for t in report["targets"]] == ["1.", "2.", "3.", "4.", "5."]
    # every comparison carries its paired bootstrap interval, "delta [lo, hi]" with lo <= delta <= hi
    assert set(report["targets"][0]["ci"]) == {"vs base", "vs base-pca50", "vs teacher-pca50"}
    t4 = report["targets"][3]["ci"]
    assert set(t4) == {"topic", "emoji", "hashtag", "emotion", "sts"}
    for text in t4.values():
        d, lo, hi = (float(v) for v in text.replace("[", "").replace("]", "").replace(",", "").split())
        assert lo <= d + 1e-9 and d <= hi + 1e-9, text
    assert set(report["targets"][1]["ci"]) == {"emoji", "mean"}
    assert all(set(r["probe_c"]) == {"sentiment", "hate", "offensive"} for r in report["rows"].values())
    assert report["spec"]["probe_cs"] == [0.1, 1.0]
    assert all(c in (0.1, 1.0) for r in report["rows"].values() for c in r["probe_c"].values())
    md = (out / "eval.md").read_text()
    assert "| base-pca50 |" in md and "## Targets" in md and "95% interval" in md
    assert report["dropped_as_seen"]["emoji"] > 0 and "Held-out items dropped because the rows were fitted" in md
    assert "Training seeds" not in md
    # a second run reuses the cached rows
    assert main(["eval", "--model", f"multitask={model}", "--out", str(out), "--data", str(tiny_data),
                 "--backend", "torch", "--pca-posts", "40", "--throughput-posts", "0"]) == 0
    assert "multitask: cached" in capsys.readouterr().out
    # a further training seed of the main model (here: the same model under a seed name) adds the seed section
    assert main(["eval", "--model", f"multitask={model}", "--model", f"multitask-seed1={model}", "--out", str(out),
                 "--data", str(tiny_data), "--backend", "torch", "--pca-posts", "40", "--throughput-posts", "0"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["seed_means"]["multitask"]["seeds"] == 2
    assert report["seed_sds"]["multitask"]["auc_topic"] == 0.0  # the same model twice
    assert [t["target"][:2] for t in report["seed_targets"]] == ["1.", "2.", "3.", "4."]
    assert "## Training seeds" in (out / "eval.md").read_text()


def test_val_split_never_reads_test_files(tiny_data, tmp_path):
    """--split val (choosing a recipe): held-out pairs and zero-shot scores come from val;
    sentiment (no train split) fits on one half of val and scores on the other."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    for p in root.rglob("test_*.txt"):
        p.unlink()
    data = E.build_eval_data(root, E.EvalSpec(split="val", pca_posts=20))
    fit, _, test, _ = data.zs["sentiment"]
    assert len(fit) == 12 and len(test) + data.dropped["zero-shot sentiment"] == 12  # the 24 val posts, in two
    assert all(len(data.pairs[t]) > 0 for t in data.pairs)


def test_prefix_rows_for_declared_dims_and_truncation_controls(smoke_model, tiny_data, tmp_path, capsys, two_cs):
    """A model declaring matryoshka_dims gets a row per prefix (served by truncate_dim, checked);
    --prefixes adds control rows for a model that declares none; each prefix adds base-pcaK."""
    import shutil

    model, _ = smoke_model
    nested = tmp_path / "nested"
    shutil.copytree(model, nested)
    cfg = json.loads((nested / "postemb.json").read_text())
    (nested / "postemb.json").write_text(json.dumps({**cfg, "matryoshka_dims": [16, 8]}))  # declared, for the plumbing
    out = tmp_path / "reports"
    common = ["--out", str(out), "--data", str(tiny_data), "--backend", "torch", "--pca-posts", "40",
              "--throughput-posts", "0"]
    assert main(["eval", "--model", f"nested={nested}", "--model", f"plain={model}", "--prefixes", "32"] + common) == 0
    rows = json.loads((out / "eval.json").read_text())["rows"]
    assert set(rows) == {"base", "base-pca50", "base-pca32", "base-pca16", "base-pca8", "nested", "nested@32",
                         "nested@16", "nested@8", "plain", "plain@32"}
    assert [rows[n]["dim"] for n in ("base-pca32", "nested@16", "plain@32")] == [32, 16, 32]
    assert [rows[n]["nested"] for n in ("nested@16", "nested@32", "plain@32")] == [True, False, False]
    # the same weights: the declared prefix and the control truncation score the same
    assert {c: rows["nested@32"][c] for c in E.COLUMNS[1:]} == {c: rows["plain@32"][c] for c in E.COLUMNS[1:]}
    md = (out / "eval.md").read_text()
    assert "## Nested dimensions" in md and "| nested@16 (nested) |" in md and "| plain@32 (control) |" in md
    assert "- `nested@8` minus `base-pca8`: zero-shot F1 " in md
    # a prefix at or above a model's dim is refused, naming the option and the value
    assert main(["eval", "--model", f"plain={model}", "--prefixes", "50"] + common) == 2
    assert "`--prefixes` must be between 1 and the dim" in capsys.readouterr().err



@pytest.mark.parametrize("zs_posts", ["3", "4"])
def test_a_probe_fit_set_too_small_for_its_folds_is_refused_before_any_model_is_embedded(tiny_data, tmp_path, capsys,
                                                                                       monkeypatch, zs_posts):
    """--zs-posts 3 was sklearn's 'Cannot have number of splits n_splits=5 greater than the number of samples'
    after every row was embedded; 4 posts of 2 labels: 'n_splits=5 cannot be greater than the number of members in
    each class'."""
    from postemb_rt.train import eval_rows

    monkeypatch.setattr(eval_rows, "embed_all", lambda *a, **k: pytest.fail("embedded before the check"))
    assert main(["eval", "--out", str(tmp_path / "r"), "--data", str(tiny_data), "--backend", "torch",
                 "--zs-posts", zs_posts, "--pca-posts", "40", "--throughput-posts", "0"]) == 2
    err = capsys.readouterr().err
    assert "zero-shot `sentiment`: the probe's fit set has" in err and f"--zs-posts {zs_posts}" in err
    assert "Fix: a larger --zs-posts" in err and "Traceback" not in err


def test_target_1_is_na_not_missed_when_a_reference_row_was_not_evaluated():
    from postemb_rt.train.report import ZS_COLS, check_targets

    def row(f):
        return {"f1_zero_shot_mean": f, "sts_spearman": 80.0, **{c: f for c in ZS_COLS}}

    rows = {"base": row(0.50), "base-pca50": row(0.40), "multitask": row(0.60)}  # no teacher-pca50 row
    t1 = check_targets(rows, "multitask")[0]
    assert t1["met"] is None and "rows missing: ['teacher-pca50']" in t1["detail"]
    rows["base"] = row(0.70)  # a present row beats it: missed, whatever is missing
    assert check_targets(rows, "multitask")[0]["met"] is False


@pytest.mark.parametrize("models, match", [
    (["base=MODEL"], r"`--model` row name 'base' is the baseline's"),  # it replaced the base row and base-pca50
    (["base-pca16=MODEL"], r"`--model` row name 'base-pca16' is the baseline's"),
    (["teacher=MODEL"], r"`--model` row name 'teacher' is the baseline's"),
    (["base-seed1=MODEL"], r"`--model` row name 'base-seed1' is the baseline's"),  # averaged into the base row
    (["teacher-pca50-seed2=MODEL"], r"`--model` row name 'teacher-pca50-seed2' is the baseline's"),
    (["a=MODEL", "a=MODEL"], r"`--model` row name 'a' is given twice"),  # the second silently replaced the first
    (["a@16=MODEL"], r"`--model` row name 'a@16' .* no '/', '@'"),  # '@' marks the prefix rows
])
def test_a_row_name_that_would_replace_another_row_is_refused_before_any_work(tmp_path, capsys, models, match):
    args = [a for m in models for a in ("--model", m.replace("MODEL", "default"))]
    out = tmp_path / "reports"
    assert main(["eval", *args, "--out", str(out), "--data", str(tmp_path / "no-data")]) != 0
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_an_out_that_cannot_be_written_is_refused_naming_the_flag_before_any_data_is_read(tmp_path, capsys):
    taken = tmp_path / "a-file"
    taken.write_text("x")
    assert main(["eval", "--out", str(taken), "--data", str(tmp_path / "no-data")]) != 0
    err = capsys.readouterr().err
    assert f"`--out` {str(taken / 'eval.json')!r} cannot be written: {taken} is a file, not a folder" in err, err


def test_held_out_items_the_rows_were_fitted_on_are_dropped_and_counted(tiny_data, tmp_path):
    """Test posts also in the train data (the tiny data repeats many), STS-B dev pairs that are train
    pairs and zero-shot test posts also in the probe's fit set are not held out: dropped, counted."""
    import shutil
    from postemb_rt.train import tasks as T
    from postemb_rt.train.distill import general_posts

    spec = E.EvalSpec(pca_posts=20)
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    train_row = (root / "stsb/stsb-en-train.csv").read_text().splitlines()[2]  # a score >= 4 pair
    with (root / "stsb/stsb-en-dev.csv").open("a") as f:
        f.write(train_row.upper() + "\n")  # case ignored
    data = E.build_eval_data(root, spec)
    seen = {E._key(t) for t in general_posts(T.load_split(root, "train"))}
    for t in ("topic", "emoji", "emotion"):
        assert data.dropped[t] > 0 and not any(E._key(p.a) in seen for p in data.pairs[t])
    assert data.dropped["sts pairs"] == 1 and len(data.sts[0]) == 30
    assert all(E._key(x) not in seen for texts, _ in data.retrieval.values() for x in texts)
    for t, (fit, _, test, _) in data.zs.items():
        assert data.dropped[f"zero-shot {t}"] > 0 and not {E._key(x) for x in fit} & {E._key(x) for x in test}
    kept = E.build_eval_data(root, dataclasses.replace(spec, drop_seen=False))
    assert kept.dropped == {} and len(kept.sts[0]) == 31 and len(kept.retrieval["topic"][0]) == 60
    assert spec.key() != dataclasses.replace(spec, drop_seen=False).key()  # cached rows of either never serve the other


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32), "x"])
def test_a_seed_numpy_cannot_take_is_refused_naming_the_flag_before_any_work(tmp_path, capsys, seed):
    """-1 failed with numpy's traceback once the data was read; 2**32 only in the probe's folds, after
    every row was embedded."""
    out = tmp_path / "reports"
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--seed", seed, "--out", str(out), "--data", str(tmp_path / "no-data")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--seed" in err and "must be an integer >= 0 and < 2**32" in err and repr(seed) in err, err
    assert not out.exists()


def test_cached_rows_never_serve_other_evaluation_data(tiny_data, tmp_path, monkeypatch):
    """The rows' cache is keyed by the evaluation data's content: the teacher's rows were keyed by teacher
    and spec alone, so another --data (or an edited file) into the same --out reused rows (and per-item
    outputs) scored on other items, silently wrong where the counts agreed; the model rows by the root's path."""
    import shutil

    import numpy as np

    from postemb_rt.train import eval_rows as R
    from postemb_rt.train import teacher as TT

    calls = []

    def fake_embed(teacher, texts, **kw):  # a fixed 8-d embedding per text: the cache logic only
        calls.append(len(texts))
        x = np.stack([np.random.default_rng(list(t.encode()) or [0]).normal(size=8) for t in texts])
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), {"seconds": 0.0, "dim": 8}

    monkeypatch.setattr(TT, "embed_cached", fake_embed)
    spec, out = E.EvalSpec(pca_posts=20, pca_dim=4), tmp_path / "reports" / "rows"
    out.mkdir(parents=True)
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    first = E.build_eval_data(root, spec)
    R._teacher_rows("base", first, spec, out, lambda m: None)
    R._teacher_rows("base", E.build_eval_data(root, spec), spec, out, lambda m: None)
    assert len(calls) == 1  # the same data: cached
    dev = root / "stsb" / "stsb-en-dev.csv"  # the same pairs, other gold scores (edited in place)
    lines = dev.read_text().splitlines()
    dev.write_text("\n".join(lines[:1] + [ln.rsplit(",", 1)[0] + f",{i % 6}" for i, ln in enumerate(lines[1:])])
                   + "\n")
    edited = E.build_eval_data(root, spec)
    assert len(edited.sts[0]) == len(first.sts[0])  # the same items: a stale row would not even fail
    rows, _ = R._teacher_rows("base", edited, spec, out, lambda m: None)
    assert len(calls) == 2
    texts = edited.texts_with_pca()
    table = dict(zip(texts, fake_embed("", texts)[0]))
    fresh = E.metrics_from(E.outputs(E._lookup(table), edited, spec), edited)
    assert rows["teacher"]["sts_spearman"] == pytest.approx(fresh["sts_spearman"])


@pytest.mark.parametrize("damage", ["json", "npz"])
def test_a_row_cache_cut_short_is_computed_again_not_an_error(tmp_path, damage):
    """A rows/<name>.json cut short (it was written in place; a kill while writing it) made every later
    `postemb eval` into that --out fail with JSONDecodeError; now it is a cache miss."""
    import numpy as np

    from postemb_rt.train import eval_rows as R

    rows = tmp_path / "rows"
    rows.mkdir()
    R._save_outputs(rows / "m.npz", {"sts": np.arange(3.0)})
    text = '{"key": "k", "rows": {"m": {"dim": 50}}}'
    (rows / "m.json").write_text(text)
    assert R._cached_rows(rows, rows / "m.json", ["m"], "k")[0] == {"m": {"dim": 50}}
    if damage == "json":
        (rows / "m.json").write_text(text[:25])
    else:
        (rows / "m.npz").write_bytes((rows / "m.npz").read_bytes()[:40])
    assert R._cached_rows(rows, rows / "m.json", ["m"], "k") is None
