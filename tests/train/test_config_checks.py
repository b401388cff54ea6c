"""``TrainConfig.validate``: every key's type and range is checked before anything loads, so
``postemb train --plan`` refuses what a run would train wrong or crash on; and the config file's
own structure (``extends``, ``steps_from``) fails as one ValidationError naming the key and file."""
import dataclasses
import json
import re

import pytest

from postemb_rt.errors import ValidationError
from postemb_rt.train import config as C
from postemb_rt.train.config import TrainConfig

# (key, value): each was accepted and trained a wrong model, or failed mid-run with a traceback
BAD = [
    ("lr", -1), ("lr", 0), ("lr", "1e-3"), ("head_lr", -1), ("mixing_temperature", -1), ("mixing_temperature", 0),
    ("mixing_temperature", 0.001),
    ("warmup_frac", 2), ("warmup_frac", -1), ("warmup_frac", 1), ("tasks", ["emoji", "emoji"]), ("tasks", "emoji"),
    ("tasks", []), ("seed", "0"), ("seed", 1.5), ("seed", -1), ("seed", 2 ** 64), ("seed", True),
    ("model_version", ""), ("model_version", 5), ("model_version", "a/b@c+d"), ("model_version", "v 1"),
    ("log_every", 0), ("threads", 0), ("lora_rank", 0), ("lora_rank", -2), ("scale_init", 0), ("scale_init", -1),
    ("weight_decay", -1), ("pca_posts", 0), ("probe_pairs", -1), ("steps", "5"), ("steps", 2.5), ("steps", 0),
    ("batch_size", "8"), ("batch_size", 1), ("batch_size", 100000), ("lora_layers", [99]), ("lora_layers", [-1]),
    ("lora_layers", []), ("lora_layers", [0, 0]), ("lora_layers", 3), ("lora_targets", ["attention.self.kee"]),
    ("lora_targets", []), ("lora_targets", "intermediate.dense"), ("projection_dim", 0), ("projection_dim", 1000),
    ("projection_dim", -5), ("projection_dim", 50.0), ("lora_alpha", 0), ("max_length", 1), ("max_length", 4096),
    ("teacher_max_length", 1), ("nce_temperature", 0), ("distill_pool", -1), ("pair_neighbours", -1),
    ("pair_posts", -1), ("task_weight", float("nan")), ("distill_weight", float("inf")), ("loss", 3),
    ("data", ""), ("data", 5), ("base", ""), ("base", 5), ("steps_from", ""), ("teacher", ""), ("teacher", 5),
    ("matryoshka_dims", "50"),
]


def _write(folder, name, keys):
    path = folder / name
    path.write_text(json.dumps(keys))
    return path


def _given(value) -> str:
    return re.escape(f"Given: {value!r}")


@pytest.mark.parametrize("key,value", BAD, ids=[f"{k}={v!r}" for k, v in BAD])
def test_a_bad_value_is_refused_naming_the_key_the_file_and_the_value(tmp_path, key, value):
    path = _write(tmp_path, "c.json", {key: value})
    with pytest.raises(ValidationError, match=rf"`{key}` in {re.escape(str(path))}.*{_given(value)}"):
        TrainConfig.from_file(path)


@pytest.mark.parametrize("key,value", [("mixing_temperature", 0), ("steps", "5"), ("batch_size", "8"),
                                       ("steps", 2.5), ("projection_dim", 1000), ("lora_layers", [99])])
def test_plan_refuses_a_bad_value_before_any_data_loads(tmp_path, monkeypatch, capsys, key, value):
    from postemb_rt.cli import main

    monkeypatch.setenv("POSTEMB_DATA", str(tmp_path / "no-data-here"))  # loading data would fail otherwise
    path = _write(tmp_path, "c.json", {key: value})
    assert main(["train", "--config", str(path), "--plan"]) == 2
    err = capsys.readouterr().err
    assert f"in {path} must" in err and f"Given: {value!r}" in err and "no-data-here" not in err, err


@pytest.mark.parametrize("seed", ["-1", str(2 ** 64)])
def test_a_seed_flag_out_of_range_is_refused_before_anything_loads(tmp_path, monkeypatch, capsys, seed):
    from postemb_rt.cli import main

    monkeypatch.setenv("POSTEMB_DATA", str(tmp_path / "no-data-here"))
    path = _write(tmp_path, "c.json", {"steps_from": "multi.json", "tasks": ["emoji"]})
    _write(tmp_path, "multi.json", {})
    assert main(["train", "--config", str(path), "--seed", seed, "--plan"]) == 2
    err = capsys.readouterr().err
    assert "`--seed`" in err and f"Given: {seed}." in err and "2**64" in err and "Traceback" not in err, err


def test_every_key_has_a_check_and_the_defaults_pass():
    checked = set(C.RANGES) | set(C.CHOICES) | set(C.NAMES) | set(C.OWN_CHECKS)
    assert checked == {f.name for f in dataclasses.fields(TrainConfig)}
    TrainConfig().validate()
    TrainConfig(lora_layers=[0, 5], lora_targets=["intermediate.dense"], projection_dim=384, seed=2 ** 64 - 1,
                model_version="postemb-mt50_v4.1", warmup_frac=0, data="some/where").validate()


def test_configs_that_set_no_model_version_never_share_one(tmp_path):
    a, again = TrainConfig.from_file(_write(tmp_path, "a.json", {"lr": 1e-3})), TrainConfig(lr=1e-3, threads=1)
    b = TrainConfig.from_file(_write(tmp_path, "b.json", {"lr": 2e-3}))
    assert re.fullmatch(r"postemb-mt50-[0-9a-f]{8}", a.model_version)
    assert a.model_version == again.model_version != b.model_version  # threads change no weight: not in it
    assert TrainConfig.from_file(_write(tmp_path, "c.json", {"lr": 2e-3, "model_version": "mine"})).model_version == "mine"
    a.validate()


def test_the_fixes_are_values_that_pass(tmp_path):
    for key, value, fix in [("model_version", "a/b@c+d", "a-b-c-d"), ("tasks", ["emoji", "sts", "emoji"],
                                                                      ["emoji", "sts"])]:
        with pytest.raises(ValidationError, match=re.escape(f"Fix: e.g. {fix!r}")):
            TrainConfig(**{key: value}).validate()
        TrainConfig(**{key: fix}).validate()


def test_distill_posts_is_bounded_and_fits_the_teachers_pool():
    with pytest.raises(ValidationError, match=r"`distill_posts` in config must be >= 0 and <= 1024.*Given: 100000"):
        TrainConfig(distill_posts=100000, distill_weight=1.0).validate()
    with pytest.raises(ValidationError, match=r"`distill_posts` in config .* <= `distill_pool` \(16\).*Given: 32"):
        TrainConfig(teacher="base", distill_posts=32, distill_pool=16, distill_weight=1.0).validate()
    TrainConfig(teacher="base", distill_posts=16, distill_pool=16, distill_weight=1.0).validate()


def test_a_base_that_cannot_be_trained_is_refused(tmp_path):
    with pytest.raises(ValidationError, match=r"`base` in config .*projection.*Given: 'default'"):
        TrainConfig(base="default").validate()
    with pytest.raises(ValidationError, match=r"`base` in config .*Given: .*nope"):
        TrainConfig(base=str(tmp_path / "nope")).validate()


def test_steps_from_the_config_itself_or_a_loop_is_a_cycle(tmp_path):
    me = _write(tmp_path, "me.json", {"tasks": ["emoji"], "steps_from": "me.json"})
    with pytest.raises(ValidationError, match=rf"`steps_from` in {re.escape(str(me))} makes a cycle"):
        TrainConfig.from_file(me)
    _write(tmp_path, "a.json", {"tasks": ["emoji"], "steps_from": "b.json"})
    _write(tmp_path, "b.json", {"tasks": ["emoji"], "steps_from": "a.json"})
    with pytest.raises(ValidationError, match=r"cycle: \[.*a\.json', .*b\.json', .*a\.json'\]"):
        TrainConfig.from_file(tmp_path / "a.json")


def test_an_extends_loop_names_every_file_of_the_chain(tmp_path):
    _write(tmp_path, "loopa.json", {"extends": "loopb.json"})
    _write(tmp_path, "loopb.json", {"extends": "loopa.json"})
    with pytest.raises(ValidationError, match=r"`extends` in .*loopb\.json makes a cycle: "
                                              r"\[.*loopa\.json', .*loopb\.json', .*loopa\.json'\]"):
        TrainConfig.from_file(tmp_path / "loopa.json")


def test_a_missing_parent_or_reference_names_the_key_in_the_child(tmp_path):
    child = _write(tmp_path, "child.json", {"extends": "nope.json"})
    with pytest.raises(ValidationError, match=rf"`extends` in {re.escape(str(child))} names .*nope\.json.* could "
                                              r"not be read"):
        TrainConfig.from_file(child)
    single = _write(tmp_path, "single.json", {"tasks": ["emoji"], "steps_from": "gone.json"})
    with pytest.raises(ValidationError, match=rf"`steps_from` in {re.escape(str(single))} names .*gone\.json"):
        TrainConfig.from_file(single)


@pytest.mark.parametrize("text,match", [("[1, 2]", r"must hold a JSON object.*Given: a list"),
                                        ('{"extends": 5}', r"`extends` in .*c\.json must be .*Given: 5"),
                                        ('{"extends": ["a.json"]}', r"`extends` in .*c\.json must be .*Given: \['a"),
                                        ('{"lr": ', r"could not be read as JSON")])
def test_a_config_file_of_the_wrong_shape_is_one_validation_error(tmp_path, text, match):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(ValidationError, match=match):
        TrainConfig.from_file(tmp_path / "c.json")


def test_a_parent_that_is_a_list_names_the_extends_key(tmp_path):
    (tmp_path / "list.json").write_text("[]")
    child = _write(tmp_path, "child.json", {"extends": "list.json"})
    with pytest.raises(ValidationError, match=rf"`extends` in {re.escape(str(child))} names .*list\.json.*JSON "
                                              "object"):
        TrainConfig.from_file(child)


def test_a_config_that_extends_another_never_inherits_its_model_version(tmp_path):
    """A variant that names no model_version gets its own hash version, never the parent's: a parent's
    version inherited by a config with other keys put two recipes' vectors under one version."""
    parent = _write(tmp_path, "parent.json", {"model_version": "postemb-mt50-parent", "lora_rank": 16})
    child = _write(tmp_path, "child.json", {"extends": "parent.json", "lora_rank": 4})
    named = _write(tmp_path, "named.json", {"extends": "child.json", "model_version": "mine"})
    p, c = TrainConfig.from_file(parent), TrainConfig.from_file(child)
    assert (p.model_version, p.lora_rank, c.lora_rank) == ("postemb-mt50-parent", 16, 4)
    assert c.model_version != p.model_version and c.model_version.startswith("postemb-mt50-")
    assert c.model_version == TrainConfig(lora_rank=4).model_version  # the hash of its keys
    assert TrainConfig.from_file(named).model_version == "mine"


def test_max_length_is_held_to_the_tokens_a_roberta_base_reads_not_its_position_count(tmp_path):
    """RoBERTa's position ids start past its padding id: 162 positions with pad_token_id 1 read 160 tokens
    (st_folder.positions, as a sentence-transformers folder's cut is held), so max_length 161 is refused."""
    from tests.st_models import build_encoder

    base = build_encoder("roberta", tmp_path / "roberta")
    TrainConfig.from_file(_write(tmp_path, "ok.json", {"base": str(base), "max_length": 160, "projection_dim": 16}))
    path = _write(tmp_path, "c.json", {"base": str(base), "max_length": 161, "projection_dim": 16})
    with pytest.raises(ValidationError, match=r"`max_length` in .*c\.json must be <= the tokens the base reads \(160"):
        TrainConfig.from_file(path)
