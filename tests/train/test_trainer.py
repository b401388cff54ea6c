import dataclasses
import json

import numpy as np
import pytest

from postemb_rt.train import tasks as T
from postemb_rt.train.config import TrainConfig, schedule, task_schedule_counts

# the short runs below compare runs with each other, never the probe loss (test_smoke_training_loss_falls
# checks it): no probe, which took most of each short run's time (its pairs encoded before and after)
NO_PROBE = {"probe_pairs": 0}


def test_smoke_training_loss_falls(smoke_model):
    _, summary = smoke_model
    assert len(summary["loss_curve"]) == 6
    start, end = summary["probe_loss_start"], summary["probe_loss_end"]
    assert set(start) == set(T.TASKS)
    # the loss on a fixed sample of training pairs, before vs after: falls on average and on most tasks
    assert np.mean(list(end.values())) < 0.9 * np.mean(list(start.values())), (start, end)
    assert sum(end[t] < start[t] for t in start) >= 4, (start, end)


def test_output_directory_loads_with_encoder_at_dim_50(smoke_model, tmp_path):
    from postemb_rt import Encoder

    out, summary = smoke_model
    cfg = json.loads((out / "postemb.json").read_text())
    assert cfg["projection_dim"] == 50 and cfg["model_version"] == "smoke-mt50"
    assert cfg["encoder"].startswith("pip:") and cfg["adapters"] == "adapters.safetensors"
    enc = Encoder.from_pretrained(str(out), backend="torch", device="cpu", warmup=False)
    x = enc.encode(["a sunny beach today", "furious again"])
    assert x.shape == (2, 50) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert summary["artefact_bytes"] < 10e6
    assert sum(summary["pairs_seen"].values()) == 30 * 8


def test_adapters_change_the_encoder_and_enter_the_fingerprint(smoke_model, tmp_path):
    import shutil

    from postemb_rt.model_dir import load_model_dir

    out, _ = smoke_model
    copy = tmp_path / "m"
    shutil.copytree(out, copy)
    before = load_model_dir(copy).fingerprint
    import os

    os.utime(copy / "adapters.safetensors", ns=(1, 1))  # same contents, new mtime: same function
    assert load_model_dir(copy).fingerprint == before
    from safetensors.torch import load_file, save_file

    state = load_file(str(copy / "adapters.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name] + 1e-3  # other adapters: another function
    save_file(state, str(copy / "adapters.safetensors"))
    assert load_model_dir(copy).fingerprint != before


def test_merged_adapters_equal_the_lora_model():
    """Merging W += B @ A at load gives what the training-time LoRA wrapper computes."""
    import torch
    from safetensors.torch import save_file

    from postemb_rt.model_dir import resolve
    from postemb_rt.modeling import PostEmbModel, merge_adapters
    from postemb_rt.train.lora import add_lora, adapter_state

    md = resolve("base")
    lora = PostEmbModel.from_model_dir(md)
    add_lora(lora.encoder, ["attention.self.query", "output.dense"], [0, 5], rank=4, alpha=8)
    torch.manual_seed(0)
    for name, p in lora.encoder.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.05)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    mask = torch.ones_like(ids)
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "a.safetensors")
        save_file(adapter_state(lora.encoder), path)
        merged = PostEmbModel.from_model_dir(md)
        assert merge_adapters(merged.encoder, path) == 4
    with torch.no_grad():
        a, b = lora(ids, mask)[1], merged(ids, mask)[1]
        base = PostEmbModel.from_model_dir(md)(ids, mask)[1]
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, base, atol=1e-3)


def test_schedule_is_seeded_and_mixing_is_temperature_scaled(tiny_data):
    cfg = TrainConfig(data=str(tiny_data), steps=50)
    assert schedule(cfg) == schedule(cfg)
    p1 = T.mixing_probabilities({"a": 100, "b": 1}, 1.0)
    p_inf = T.mixing_probabilities({"a": 100, "b": 1}, 1e9)
    assert p1["a"] == pytest.approx(100 / 101) and p_inf["a"] == pytest.approx(0.5)
    assert sum(task_schedule_counts(cfg).values()) == 50


def test_single_task_config_takes_its_steps_from_the_multitask_run(tiny_data, tmp_path):
    multi = tmp_path / "multi.json"
    multi.write_text(json.dumps({"data": str(tiny_data), "steps": 40}))
    single = tmp_path / "single.json"
    single.write_text(json.dumps({"data": str(tiny_data), "tasks": ["emoji"], "steps_from": "multi.json"}))
    counts = task_schedule_counts(TrainConfig.from_file(multi))
    assert TrainConfig.from_file(single).steps == counts["emoji"]
    # another seed draws another schedule: the single-task run follows the multi-task run's seed
    by_seed = {s: task_schedule_counts(TrainConfig.from_file(multi, seed=s))["emoji"] for s in range(6)}
    assert len(set(by_seed.values())) > 1
    for s, n in by_seed.items():
        cfg = TrainConfig.from_file(single, seed=s)
        assert cfg.seed == s and cfg.steps == n


def test_mixed_task_batches_keep_each_tasks_pairs_and_spread_them_over_the_steps(tiny_data, tmp_path):
    from postemb_rt.errors import ValidationError
    from postemb_rt.train.config import step_pairs
    from postemb_rt.train.trainer import train
    from tests.train.conftest import SMOKE

    one = TrainConfig(data=str(tiny_data), steps=40, batch_size=8)
    mixed = dataclasses.replace(one, task_batches="mixed")
    plan = schedule(one)
    assert step_pairs(one, plan) == [{t: 8} for t in plan]
    got = step_pairs(mixed, plan)
    assert got == step_pairs(mixed, plan) and len(got) == 40
    assert all(sum(c.values()) == 8 for c in got)
    totals = {t: sum(c.get(t, 0) for c in got) for t in one.tasks}
    assert totals == {t: 8 * n for t, n in task_schedule_counts(one).items()}  # single-task runs stay matched
    assert np.mean([len(c) for c in got]) > 2  # several tasks per step, not one
    with pytest.raises(ValidationError, match="`task_batches` in .* must be 'one' or 'mixed'. Given: 'per-step'"):
        TrainConfig(task_batches="per-step").validate()
    with pytest.raises(ValidationError, match="`task_batches` 'mixed' .* needs `loss` 'bce'"):
        TrainConfig(task_batches="mixed", loss="contrastive").validate()
    cfg = dict(SMOKE, steps=4, log_every=2, **NO_PROBE)
    a = train(TrainConfig(data=str(tiny_data), **cfg), tmp_path / "a", progress=lambda m: None)
    b = train(TrainConfig(data=str(tiny_data), task_batches="mixed", **cfg), tmp_path / "b", progress=lambda m: None)
    assert b["pairs_seen"] == a["pairs_seen"] and np.isfinite(b["loss_curve"][-1]["loss"])


def test_per_task_calibration_gives_each_task_its_scale_and_leaves_single_task_runs_as_they_were(tiny_data, tmp_path):
    from postemb_rt.errors import ValidationError
    from postemb_rt.train.trainer import train
    from tests.train.conftest import SMOKE

    with pytest.raises(ValidationError, match="`calibration` in .* must be 'shared' or 'per_task'. Given: 'task'"):
        TrainConfig(calibration="task").validate()
    cfg = dict(SMOKE, steps=6, log_every=3, task_batches="mixed", **NO_PROBE)
    multi = train(TrainConfig(data=str(tiny_data), calibration="per_task", **cfg), tmp_path / "m", progress=lambda m: None)
    scales, offsets = multi["final_scale"], multi["final_offset"]
    assert set(scales) == set(offsets) == set(T.TASKS)
    assert len({round(v, 6) for v in scales.values()}) == len(T.TASKS)  # each task moved its own scale
    shared = train(TrainConfig(data=str(tiny_data), **cfg), tmp_path / "s", progress=lambda m: None)
    assert isinstance(shared["final_scale"], float) and shared["pairs_seen"] == multi["pairs_seen"]
    # one task: one scale either way, so a single-task run of a per_task config is the shared run
    one = dict(cfg, tasks=["emoji"])
    a = train(TrainConfig(data=str(tiny_data), **one), tmp_path / "a", progress=lambda m: None)
    b = train(TrainConfig(data=str(tiny_data), calibration="per_task", **one), tmp_path / "b", progress=lambda m: None)
    assert b["final_scale"] == {"emoji": pytest.approx(a["final_scale"], rel=1e-6)}
    assert [c["loss"] for c in b["loss_curve"]] == pytest.approx([c["loss"] for c in a["loss_curve"]], rel=1e-6)


def test_task_balance_gives_every_task_the_same_total_weight_and_leaves_single_task_runs_as_they_were(tiny_data, tmp_path):
    from postemb_rt.errors import ValidationError
    from postemb_rt.train.trainer import train
    from tests.train.conftest import SMOKE

    with pytest.raises(ValidationError, match="`task_balance` in .* must be 'pairs' or 'tasks'. Given: 'task'"):
        TrainConfig(task_balance="task").validate()
    cfg = dict(SMOKE, steps=10, log_every=5, task_batches="mixed", **NO_PROBE)
    pairs = train(TrainConfig(data=str(tiny_data), **cfg), tmp_path / "p", progress=lambda m: None)
    tasks = train(TrainConfig(data=str(tiny_data), task_balance="tasks", **cfg), tmp_path / "t", progress=lambda m: None)
    assert pairs["task_balance"] == {t: 1.0 for t in pairs["pairs_seen"] if pairs["pairs_seen"][t]}
    seen, w = tasks["pairs_seen"], tasks["task_balance"]
    assert len({round(seen[t] * w[t], 6) for t in w}) == 1  # the same total weight for every task
    assert sum(seen[t] * w[t] for t in w) == pytest.approx(sum(seen.values()))  # the run's total is kept
    assert len(set(w.values())) > 1 and tasks["loss_curve"] != pairs["loss_curve"]
    # one task: weight 1, so a single-task run of a "tasks" config is the "pairs" run
    one = dict(cfg, tasks=["emoji"])
    a = train(TrainConfig(data=str(tiny_data), **one), tmp_path / "a", progress=lambda m: None)
    b = train(TrainConfig(data=str(tiny_data), task_balance="tasks", **one), tmp_path / "b", progress=lambda m: None)
    assert b["task_balance"] == {"emoji": 1.0}
    assert [c["loss"] for c in b["loss_curve"]] == pytest.approx([c["loss"] for c in a["loss_curve"]], rel=1e-6)


def test_pair_tasks_from_tiny_data(tiny_data):
    sd = T.load_split(tiny_data, "train")
    rng = np.random.default_rng(0)
    for name in T.TASKS:
        task = T.build_task(sd, name)
        pairs = task.heldout(rng, 10)
        assert {p.label for p in pairs} == {0.0, 1.0}, name
        assert all(p.a.strip() and p.b.strip() for p in pairs), name
    topic = T.build_task(sd, "topic")
    assert all("#SemST" not in t for t in topic.ds.texts)
    tags = T.build_task(sd, "hashtag")
    assert "semst" not in tags.vocab and "beachlife" in tags.vocab
    assert tags.words["beachlife"] == "Beach Life"
    for p in tags.sample(rng, 20, positives_only=True):
        assert "#" not in p.a or "#beachlife" not in p.a.lower()


def test_similarity_loss_is_zero_for_an_affine_copy_of_the_teacher_cosines_and_positive_otherwise():
    import torch

    from postemb_rt.train.distill import _similarity_loss

    gen = torch.Generator().manual_seed(0)
    teacher = torch.nn.functional.normalize(torch.randn(8, 384, generator=gen), dim=-1)
    # an orthonormal map keeps every cosine: the loss is 0 whatever the dimension of the student
    q, _ = torch.linalg.qr(torch.randn(384, 384, generator=gen))
    assert _similarity_loss(teacher @ q, teacher).item() < 1e-5
    other = torch.nn.functional.normalize(torch.randn(8, 50, generator=gen), dim=-1)
    assert _similarity_loss(other, teacher).item() > 0.5


def test_config_rejects_a_negative_distill_weight():
    from postemb_rt.errors import ValidationError

    with pytest.raises(ValidationError, match="distill_weight"):
        TrainConfig(distill_weight=-1.0).validate()


def test_config_rejects_distill_posts_without_a_distill_weight():
    from postemb_rt.errors import ValidationError

    with pytest.raises(ValidationError, match="distill_posts.*distill_weight"):
        TrainConfig(distill_posts=16).validate()
    TrainConfig(distill_posts=16, distill_weight=1.0).validate()


def test_task_weight_scales_the_task_loss_and_must_be_positive(tiny_data, tmp_path):
    from postemb_rt.errors import ValidationError
    from postemb_rt.train.trainer import train
    from tests.train.conftest import SMOKE

    with pytest.raises(ValidationError, match="`task_weight` .* must be > 0.*Given: 0.0"):
        TrainConfig(task_weight=0.0).validate()
    cfg = dict(SMOKE, steps=1, log_every=1, **NO_PROBE)
    full = train(TrainConfig(data=str(tiny_data), **cfg), tmp_path / "a", progress=lambda m: None)
    half = train(TrainConfig(data=str(tiny_data), task_weight=0.5, **cfg), tmp_path / "b", progress=lambda m: None)
    # same seed, same pairs, no distillation: the first step's loss is the task loss alone
    assert half["loss_curve"][0]["loss"] == pytest.approx(0.5 * full["loss_curve"][0]["loss"], rel=1e-5)


def test_general_posts_stream_feeds_the_similarity_term(tiny_data, tmp_path):
    """A short run with the general-posts stream: trains, and its loss includes the stream's term."""
    from postemb_rt.train.distill import general_posts
    from postemb_rt.train.trainer import train
    from tests.train.conftest import SMOKE

    sd = T.load_split(tiny_data, "train")
    pool = general_posts(sd)
    assert len(pool) == len(sd.emoji) + len(sd.emotion) + len(sd.topic) + 2 * 40  # 40 STS train pairs
    cfg = dict(SMOKE, steps=4, log_every=1, distill_weight=1.0, **NO_PROBE)
    plain = train(TrainConfig(data=str(tiny_data), **cfg), tmp_path / "a", progress=lambda m: None)
    stream = train(TrainConfig(data=str(tiny_data), distill_posts=8, **cfg), tmp_path / "b", progress=lambda m: None)
    assert stream["config"]["distill_posts"] == 8
    # same seed, same pairs: the first step's loss differs only by the stream posts in the similarity term
    assert stream["loss_curve"][0]["loss"] != pytest.approx(plain["loss_curve"][0]["loss"], abs=1e-6)


def test_extends_takes_every_key_of_the_parent_and_the_repo_configs_parse(tmp_path, tiny_data, monkeypatch):
    from pathlib import Path

    from postemb_rt.errors import ValidationError

    (tmp_path / "multi.json").write_text(json.dumps({"steps": 40, "lora_rank": 4, "tasks": ["emoji", "sts"]}))
    (tmp_path / "single.json").write_text(json.dumps({"extends": "multi.json", "tasks": ["emoji"]}))
    cfg = TrainConfig.from_file(tmp_path / "single.json")
    assert (cfg.steps, cfg.lora_rank, cfg.tasks) == (40, 4, ["emoji"])
    (tmp_path / "loop.json").write_text(json.dumps({"extends": "loop.json"}))
    with pytest.raises(ValidationError, match="cycle"):
        TrainConfig.from_file(tmp_path / "loop.json")
    monkeypatch.setenv("POSTEMB_DATA", str(tiny_data))  # steps_from counts the schedule on the (tiny) data
    configs = Path(__file__).resolve().parents[2] / "configs"
    for folder in (configs, configs / "v3", configs / "v3" / "steps1600"):
        multi = TrainConfig.from_file(folder / "multitask.json")
        for t in T.TASKS:
            single = TrainConfig.from_file(folder / f"single_{t}.json")
            assert single.tasks == [t] and single.steps == task_schedule_counts(multi)[t]
            same = {k: v for k, v in dataclasses.asdict(single).items() if k not in ("tasks", "steps", "steps_from",
                                                                                    "model_version", "threads")}
            assert same == {k: v for k, v in dataclasses.asdict(multi).items() if k in same}, (folder, t)
    v3 = TrainConfig.from_file(configs / "v3" / "multitask.json")
    # the shipped recipe: the v3 terms plus three options that change nothing with one task, so the
    # v3 single-task runs (steps from v3/multitask.json's schedule, the same as default.json's) are its own
    shipped = TrainConfig.from_file(configs / "v3" / "default.json")
    differ = {k for k, v in dataclasses.asdict(shipped).items() if dataclasses.asdict(v3)[k] != v}
    assert differ == {"model_version", "task_batches", "calibration", "task_balance"}, differ
    assert task_schedule_counts(shipped) == task_schedule_counts(v3)
    for path in sorted((configs / "v3" / "ablations").glob("*.json")):  # every ablation parses and validates
        cfg = TrainConfig.from_file(path)
        assert cfg.model_version != v3.model_version and cfg.steps == v3.steps, path
    v4 = TrainConfig.from_file(configs / "v4" / "default.json")
    for path in sorted((configs / "v4" / "ablations").glob("*.json")):  # v4's variants: nesting options only
        cfg = TrainConfig.from_file(path)
        cfg.validate()
        differ = {k for k, v in dataclasses.asdict(cfg).items() if dataclasses.asdict(v4)[k] != v}
        assert "model_version" in differ and differ <= {"model_version", "matryoshka_dims", "matryoshka_weights"}, path
    for path in sorted((configs / "v4" / "steps1600").glob("*.json")):  # the same variants at 1,600 steps
        cfg = TrainConfig.from_file(path)
        cfg.validate()
        same = TrainConfig.from_file(configs / "v4" / "ablations" / path.name)
        differ = {k for k, v in dataclasses.asdict(cfg).items() if dataclasses.asdict(same)[k] != v}
        assert differ == {"model_version", "steps"} and cfg.steps == 2 * same.steps, path


def test_the_projections_least_squares_start_is_the_same_on_every_call():
    """The teacher-init projection solves an affine least-squares map from the base's pooled
    vectors. With LAPACK's pivoted-QR solver (gelsy, torch's CPU default) the same input gave
    a different answer from call to call: on this input in the 11th digit, and on a small run's
    real input on a loaded machine by up to 20% of the largest weight, so two runs of one config
    started apart. The solve must be a function of its input (to rounding: 1e-13 of the largest
    weight here, where gelsy differed by 3e-11) and the minimum-norm least-squares map."""
    import torch

    from postemb_rt.train.distill import least_squares_map

    rng = np.random.default_rng(0)
    n, h, d = 64, 384, 50  # fewer posts than dimensions, a common mean, a decaying spectrum
    basis = np.linalg.qr(rng.standard_normal((h, n - 1)))[0]
    coef = rng.standard_normal((n, n - 1)) * np.geomspace(1.0, 1e-3, n - 1)
    x = torch.from_numpy((0.5 * rng.standard_normal(h) + coef @ basis.T).astype(np.float32)).double()
    y = torch.from_numpy(rng.standard_normal((n, d)))
    w0, b0 = least_squares_map(x, y)
    tol = 1e-13 * float(w0.abs().max())
    for _ in range(100):
        w, b = least_squares_map(x, y)
        assert float((w - w0).abs().max()) <= tol and float((b - b0).abs().max()) <= tol
    x1 = np.hstack([x.numpy(), np.ones((n, 1))])
    want = np.linalg.pinv(x1) @ y.numpy()  # the minimum-norm least-squares solution
    assert np.allclose(w0.numpy(), want[:-1].T, rtol=0, atol=1e-8 * np.abs(want).max())
    assert np.allclose(b0.numpy(), want[-1], rtol=0, atol=1e-8 * np.abs(want).max())


@pytest.mark.parametrize("damage", ["edited weights", "truncated file", "moved from another key", "old format"])
def test_a_damaged_edited_moved_or_old_pca_cache_entry_is_computed_again(tmp_path, monkeypatch, damage):
    import torch
    from safetensors.torch import save_file

    from postemb_rt.modeling import PostEmbModel
    from postemb_rt.model_dir import resolve
    from postemb_rt.native import pack_padded
    from postemb_rt.tokenization import PostTokenizer
    from postemb_rt.train.distill import _cached_pca

    monkeypatch.setenv("POSTEMB_CACHE", str(tmp_path))
    md = resolve("base")
    model, tok = PostEmbModel.from_model_dir(md), PostTokenizer(md.tokenizer_path, 16)
    cfg = TrainConfig(projection_dim=8, max_length=16)
    posts = [f"post number {i} about the sea" for i in range(12)]
    said: list[str] = []
    w, b = _cached_pca(md, model, tok, posts, cfg, pack_padded, said.append)
    assert w.shape == (8, md.config.hidden_size) and not said  # computed
    assert all(torch.equal(x, y) for x, y in zip(_cached_pca(md, model, tok, posts, cfg, pack_padded, said.append),
                                                 (w, b)))
    assert said and "from cache" in said[-1]
    (path,) = (tmp_path / "pca").glob("*.safetensors")
    if damage == "edited weights":  # the stored key and hash kept, the weights changed
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        save_file({"weight": w * 2, "bias": b}, str(path), metadata=meta)
    elif damage == "truncated file":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "moved from another key":
        _cached_pca(md, model, tok, posts[:-1], cfg, pack_padded, said.append)
        (other,) = [p for p in (tmp_path / "pca").glob("*.safetensors") if p != path]
        path.write_bytes(other.read_bytes())
    else:  # what the cache held before entries carried their key and hash
        save_file({"weight": w * 2, "bias": b}, str(path))
    said.clear()
    again = _cached_pca(md, model, tok, posts, cfg, pack_padded, said.append)
    assert "computing it again" in said[0] and torch.allclose(again[0], w) and torch.allclose(again[1], b)
