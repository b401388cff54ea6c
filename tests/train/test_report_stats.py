"""The report's statistics: fast AUC / macro-F1 match sklearn, bootstrap intervals, seed means."""
import numpy as np
import pytest

from postemb_rt.train import evaluate as E
from postemb_rt.train import report as R
from postemb_rt.train.tasks import Pair


def test_rank_auc_and_macro_f1_match_sklearn():
    from sklearn.metrics import f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounded: many ties
    assert E._auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    t, p = rng.integers(0, 3, 400), rng.integers(0, 4, 400)  # a predicted label absent from the truth
    assert E._macro_f1(t, p) == pytest.approx(f1_score(t, p, average="macro"), abs=1e-12)


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n).astype(float)
    pairs = {"topic": [Pair("a", "b", float(v), None) for v in labels]}
    zs = {"hate": ([], np.zeros(0, int), [], rng.integers(0, 2, n))}
    return E.EvalData(pairs, zs, ([], [], rng.normal(size=n)), {}, []), labels


def test_paired_delta_is_zero_for_identical_rows_and_significant_for_a_clearly_better_one():
    data, y = _data()
    rng = np.random.default_rng(1)
    weak = {"pair_topic": y + rng.normal(scale=2.0, size=y.size)}
    strong = {"pair_topic": y + rng.normal(scale=0.3, size=y.size)}
    d, lo, hi = E.paired_delta([("auc_topic", weak, weak)], data, n_boot=200)
    assert (d, lo, hi) == (0.0, 0.0, 0.0)
    d, lo, hi = E.paired_delta([("auc_topic", strong, weak)], data, n_boot=200)
    assert d == pytest.approx(E._auc(strong["pair_topic"], y) - E._auc(weak["pair_topic"], y))
    assert 0 < lo < d < hi
    # a difference of pure noise: the interval spans 0
    noisy = {"pair_topic": weak["pair_topic"] + rng.normal(scale=0.05, size=y.size)}
    _, lo, hi = E.paired_delta([("auc_topic", noisy, weak)], data, n_boot=200)
    assert lo < 0 < hi


def test_paired_delta_averages_over_columns_and_handles_f1():
    data, _ = _data()
    ty = data.zs["hate"][3]
    right, wrong = {"probe_hate": ty.copy()}, {"probe_hate": 1 - ty}
    d, lo, hi = E.paired_delta([("f1_hate", right, wrong)], data, n_boot=100)
    assert d == pytest.approx(1.0) and lo == pytest.approx(1.0)
    y = np.array([p.label for p in data.pairs["topic"]])
    both = [("f1_hate", right, wrong), ("auc_topic", {"pair_topic": y}, {"pair_topic": y})]
    assert E.paired_delta(both, data, n_boot=100)[0] == pytest.approx(0.5)


def test_seed_rows_are_grouped_into_means_and_spreads():
    row = lambda v: {"dim": 50, **{c: v for c in E.COLUMNS[1:]}}  # noqa: E731
    rows = {"base": row(0.1), "multitask": row(0.5), "multitask-seed1": row(0.7), "multitask-seed2": row(0.6),
            "orphan-seed1": row(0.9)}
    means, sds = R.seed_means(rows)
    assert set(means) == {"multitask"} and means["multitask"]["seeds"] == 3
    assert means["multitask"]["auc_topic"] == pytest.approx(0.6)
    assert sds["multitask"]["auc_topic"] == pytest.approx(0.1)


def test_seed_rows_of_a_prefix_are_grouped_with_that_prefix():
    row = lambda v, d=50: {"dim": d, **{c: v for c in E.COLUMNS[1:]}}  # noqa: E731
    rows = {"v4": row(0.5), "v4-seed1": row(0.7), "v4@16": row(0.2, 16), "v4-seed1@16": row(0.4, 16),
            "v4-seed2@16": row(0.3, 16)}
    means, _ = R.seed_means(rows)
    assert set(means) == {"v4", "v4@16"} and means["v4@16"]["seeds"] == 3 and means["v4"]["seeds"] == 2
    assert means["v4@16"]["auc_topic"] == pytest.approx(0.3)


def test_pca_k_is_the_first_k_coordinates_of_one_fit_and_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 24)) @ rng.normal(size=(24, 24))
    table = {f"t{i}": v.astype(np.float32) for i, v in enumerate(x)}
    fit = [f"t{i}" for i in range(80)]
    both, alone = E.pca_tables(table, fit, [16, 4]), E.pca_tables(table, fit, [4])
    rows = lambda t: np.stack(list(t.values()))  # noqa: E731
    assert np.allclose(rows(both[4]), rows(alone[4]), atol=1e-6)
    assert np.allclose(rows(both[4]), rows(E.prefix_table(both[16], 4)), atol=1e-5)  # PCA is nested
    ref = PCA(4).fit(x[:80].astype(np.float32)).transform(x.astype(np.float32))
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got = rows(both[4])
    assert np.allclose(got @ got.T, ref @ ref.T, atol=1e-4)  # the same cosines (axis signs aside)
