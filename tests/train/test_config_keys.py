"""Config keys a user got wrong are refused naming the file that holds them, never silently dropped."""
import pytest

from postemb_rt.errors import ValidationError
from postemb_rt.train.config import TrainConfig


def test_a_key_given_twice_is_refused_naming_it_and_the_file(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"steps": 10, "tasks": ["emoji"], "steps": 1000}')  # json.loads keeps the last silently
    with pytest.raises(ValidationError, match=r"`steps` in \S*c\.json is given twice.*Fix: "):
        TrainConfig.from_file(p)


def test_a_key_given_twice_in_an_extended_file_names_that_file(tmp_path):
    (tmp_path / "parent.json").write_text('{"lr": 0.001, "lr": 0.01}')
    (tmp_path / "child.json").write_text('{"extends": "parent.json", "steps": 3}')
    with pytest.raises(ValidationError, match=r"`lr` in \S*parent\.json is given twice"):
        TrainConfig.from_file(tmp_path / "child.json")


def test_an_unknown_key_in_an_extended_file_names_that_file_and_the_likely_key(tmp_path):
    (tmp_path / "parent.json").write_text('{"stpes": 10}')
    (tmp_path / "child.json").write_text('{"extends": "parent.json", "steps": 3}')
    with pytest.raises(ValidationError) as err:
        TrainConfig.from_file(tmp_path / "child.json")
    msg = str(err.value)
    assert "parent.json" in msg and "child.json" not in msg.split("Known keys")[0], msg
    assert "'stpes'" in msg and "'steps'" in msg.split("Known keys")[0], msg


def test_an_unknown_key_suggests_the_closest_known_one(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"learning_rate": 0.001, "batchsize": 8}')
    with pytest.raises(ValidationError) as err:
        TrainConfig.from_file(p)
    msg = str(err.value).split("Known keys")[0]
    assert "unknown keys ['batchsize', 'learning_rate']" in msg and "'batch_size'" in msg, msg


def test_a_bad_value_in_an_extended_file_names_that_file(tmp_path):
    (tmp_path / "parent.json").write_text('{"lr": -1, "tasks": ["emoji"]}')
    (tmp_path / "child.json").write_text('{"extends": "parent.json", "steps": 3}')
    with pytest.raises(ValidationError, match=r"`lr` in \S*parent\.json must be > 0.*Given: -1"):
        TrainConfig.from_file(tmp_path / "child.json")
    (tmp_path / "child.json").write_text('{"extends": "parent.json", "lr": 0.001, "steps": 0}')  # the child's own
    with pytest.raises(ValidationError, match=r"`steps` in \S*child\.json must be >= 1"):
        TrainConfig.from_file(tmp_path / "child.json")


def test_a_choice_error_lists_the_choices(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('{"loss": "mse"}')
    with pytest.raises(ValidationError, match=r"`loss` in \S*c\.json must be 'bce' or 'contrastive'\. Given: 'mse'"):
        TrainConfig.from_file(p)
    p.write_text('{"projection_init": "zeros"}')
    with pytest.raises(ValidationError, match=r"must be 'pca', 'random' or 'teacher'\. Given: 'zeros'"):
        TrainConfig.from_file(p)
