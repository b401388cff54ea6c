"""Nested dimensions (Matryoshka) in every loss term of the recipe (postemb_rt/train/losses.py),
their config checks, and the trained directory that declares them."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from postemb_rt.errors import ValidationError
from postemb_rt.train import losses as L
from postemb_rt.train.config import TrainConfig
from postemb_rt.train.distill import teacher_pca

D = 50
PREFIXES = [50, 32, 16, 8]
COMPONENT = 20  # perturbed: inside the prefixes 50 and 32, outside 16 and 8


def _unit(*shape, seed):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _perturbed(x):
    y = x.clone()
    y[:, COMPONENT] += 0.5
    return torch.nn.functional.normalize(y, dim=-1)  # unit rows again, as the model outputs


def _terms():
    """name -> loss(student rows (8, D), dims) for every term, the rest of its inputs fixed."""
    n = 8
    teacher = _unit(n, 768, seed=1)
    targets = L.teacher_targets(_unit(n, D, seed=2), [(k, 1.0) for k in PREFIXES])
    idx = torch.arange(n)
    eb = _unit(3, D, seed=3)
    col = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
    scale, offset, pw = torch.full((n,), 10.0), torch.full((n,), -5.0), torch.linspace(0.5, 1.5, n)
    want = torch.linspace(-0.2, 0.9, n // 2)
    return {
        "task bce": lambda es, dims: L.task_loss(es, eb, col, y, scale, offset, pw, False, dims),
        "task contrastive": lambda es, dims: L.task_loss(es, eb, col, y, scale, offset, pw, True, dims),
        "task bce (b side)": lambda es, dims: L.task_loss(eb[col], es, torch.arange(n), y, scale, offset, None,
                                                          False, dims),
        "similarity": lambda es, dims: L.similarity_term(es, teacher, dims),
        "direct": lambda es, dims: L.direct_term(es, targets, idx, dims),
        "nce": lambda es, dims: L.nce_term(es, targets, idx, 0.05, dims),
        "pair": lambda es, dims: L.pair_term(es[::2], es[1::2], want, dims),
    }


@pytest.mark.parametrize("name", list(_terms()))
def test_a_perturbation_of_one_component_changes_each_term_only_at_the_prefixes_that_hold_it(name):
    term = _terms()[name]
    es = _unit(8, D, seed=0)
    moved = _perturbed(es)
    for k in PREFIXES:
        before, after = term(es, [(k, 1.0)]).item(), term(moved, [(k, 1.0)]).item()
        if k > COMPONENT:
            assert after != pytest.approx(before, abs=1e-6), (name, k)
        else:  # the re-normalised prefix does not see the component (nor the full row's new length)
            assert after == pytest.approx(before, abs=1e-6), (name, k)
    # the nested loss is the weighted sum over the prefixes
    dims = [(50, 1.0), (32, 0.5), (16, 2.0), (8, 1.0)]
    assert term(es, dims).item() == pytest.approx(sum(w * term(es, [(k, 1.0)]).item() for k, w in dims), rel=1e-6)


def test_one_prefix_is_the_full_rows_untouched():
    es = _unit(4, D, seed=0) * 3.0  # not unit: re-normalising would show
    assert L.prefix(es, D) is es
    assert torch.allclose(L.prefix(es, 8).norm(dim=-1), torch.ones(4))
    assert L.nested(lambda k: torch.tensor(float(k)), [(D, 1.0)]).item() == D


def test_the_teachers_targets_at_prefix_k_are_its_pca_k_targets():
    emb = np.random.default_rng(0).normal(size=(300, 64)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    full = torch.from_numpy(teacher_pca(emb, D)[0])
    targets = L.teacher_targets(full, [(k, 1.0) for k in PREFIXES])
    assert targets[D] is full
    for k in PREFIXES[1:]:
        assert np.allclose(targets[k].numpy(), teacher_pca(emb, k)[0], atol=1e-5), k


@pytest.mark.parametrize("dims, why", [
    ([32, 50], "not descending"), ([60, 50, 32], "> dim"), ([50, 16, 0], "< 1"), ([50, 32, 32], "duplicate"),
    ([32, 16, 8], "misses the full dim"), ([50, 16.5], "not an int"), ([], "empty"), ("50", "not a list"),
])
def test_a_bad_dims_list_is_refused_naming_the_option_the_value_and_the_fix(dims, why):
    with pytest.raises(ValidationError, match=r"`matryoshka_dims` in config must .*Given: .*Fix: ") as err:
        TrainConfig(matryoshka_dims=dims).validate()
    assert str(dims) in str(err.value) or repr(dims) in str(err.value), why


def test_bad_weights_and_a_learnt_direct_map_are_refused():
    with pytest.raises(ValidationError, match=r"`matryoshka_weights` .* 4 numbers > 0.*Given: \[1, 1\]"):
        TrainConfig(matryoshka_dims=PREFIXES, matryoshka_weights=[1, 1]).validate()
    with pytest.raises(ValidationError, match=r"`matryoshka_weights` .*Given: \[1, 0, 1, 1\]"):
        TrainConfig(matryoshka_dims=PREFIXES, matryoshka_weights=[1, 0, 1, 1]).validate()
    with pytest.raises(ValidationError, match=r"`matryoshka_dims` .* needs `direct_target` 'pca'"):
        TrainConfig(matryoshka_dims=PREFIXES, teacher="base", distill_posts=8, direct_weight=1.0,
                    direct_target="linear").validate()
    cfg = TrainConfig(matryoshka_dims=PREFIXES, matryoshka_weights=[1, 0.5, 0.5, 0.25])
    cfg.validate()
    assert cfg.nested_dims() == [(50, 1.0), (32, 0.5), (16, 0.5), (8, 0.25)]
    assert TrainConfig().nested_dims() == [(50, 1.0)]


# the shipped v3 recipe's terms, small: every term on (similarity, direct, in-batch negatives, pairs)
RECIPE = dict(teacher="base", teacher_max_length=32, distill_posts=8, distill_weight=1.0, direct_weight=1.0,
              nce_weight=0.5, pair_weight=1.0, pair_posts=4, pair_neighbours=0, projection_init="teacher",
              task_batches="mixed", calibration="per_task", task_balance="tasks", steps=2, log_every=1,
              probe_pairs=4)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory):
    """{label: (model dir, summary)}: the recipe un-nested (no matryoshka_dims), with [50], and
    with [50, 32, 16, 8].

    Runs of one recipe start alike and train alike: the teacher-init projection's least-squares
    solve was not a function of its input (LAPACK gelsy; distill.least_squares_map says more),
    which made two runs of this tiny recipe start apart about one time in five (2026-12-03/04)."""
    from postemb_rt.train.trainer import train
    from tests.train.conftest import SMOKE

    got = {}
    for label, extra in (("unnested", {}), ("one", {"matryoshka_dims": [50], "matryoshka_weights": [1.0]}),
                         ("nested", {"matryoshka_dims": PREFIXES})):
        out = tmp_path_factory.mktemp(label) / "m"
        got[label] = out, train(TrainConfig(data=str(tiny_data), **{**SMOKE, **RECIPE, **extra}), out,
                                progress=lambda m: None)
    return got


def test_the_full_dim_alone_is_the_unnested_recipe(runs):
    """[50] (weight 1) is exactly the un-nested recipe: the same (k, w) list, so every term takes
    the same code path (losses.nested returns the term itself), and no prefixes are declared."""
    assert TrainConfig(matryoshka_dims=[50], matryoshka_weights=[1.0]).nested_dims() == TrainConfig().nested_dims()
    out, summary = runs["one"]
    assert "matryoshka_dims" not in json.loads((out / "postemb.json").read_text())
    assert "probe_loss_end_prefixes" not in summary
    # and trains as the un-nested run does: the same start, the same steps, the same weights
    plain_out, plain = runs["unnested"]
    assert summary["probe_loss_start"] == plain["probe_loss_start"]
    assert summary["loss_curve"] == plain["loss_curve"]
    for name in ("projection.safetensors", "adapters.safetensors"):
        mine, theirs = load_file(str(out / name)), load_file(str(plain_out / name))
        assert mine.keys() == theirs.keys() and all(torch.allclose(mine[k], theirs[k], atol=1e-6) for k in mine)
    es = _unit(8, D, seed=0)
    for name, term in _terms().items():
        assert torch.equal(term(es, [(D, 1.0)]), term(es, TrainConfig().nested_dims())), name


def test_a_nested_run_logs_every_term_reports_each_prefix_and_declares_the_prefixes(runs):
    from postemb_rt import Encoder

    out, nested = runs["nested"]
    first = nested["loss_curve"][0]
    assert all(np.isfinite(first[t]) and first[t] > 0 for t in ("loss", "similarity", "direct", "nce", "pair"))
    assert json.loads((out / "postemb.json").read_text())["matryoshka_dims"] == [32, 16, 8]
    by_k = nested["probe_loss_end_prefixes"]  # the probe is also reported per prefix at the end
    assert list(by_k) == PREFIXES and by_k[50] == nested["probe_loss_end"] and set(by_k[8]) == set(by_k[50])
    enc = Encoder.from_pretrained(str(out), backend="torch", device="cpu", warmup=False)
    full, cut = enc.encode(["a sunny beach today", "furious again"]), enc.encode(
        ["a sunny beach today", "furious again"], truncate_dim=16)
    assert cut.shape == (2, 16)
    assert np.allclose(cut, full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True), atol=1e-5)


def test_the_v4_config_is_v3_with_nested_dims_and_plans(tiny_data, monkeypatch, capsys):
    from postemb_rt.cli import main

    configs = Path(__file__).resolve().parents[2] / "configs"
    v3 = TrainConfig.from_file(configs / "v3" / "default.json")
    v4 = TrainConfig.from_file(configs / "v4" / "default.json")
    differ = {k for k, v in dataclasses.asdict(v4).items() if dataclasses.asdict(v3)[k] != v}
    assert differ == {"model_version", "matryoshka_dims"} and v4.matryoshka_dims == PREFIXES
    monkeypatch.setenv("POSTEMB_DATA", str(tiny_data))
    assert main(["train", "--config", str(configs / "v4" / "default.json"), "--plan"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["matryoshka_dims"] == PREFIXES and plan["matryoshka_weights"] == [1.0] * 4 and plan["steps"] == 800
