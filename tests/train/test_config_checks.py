"""``TrainConfig.validate``: every key's type and range is checked before anything loads, so
``postemb train --plan`` refuses what a run would train wrong or crash on; and the config file's
own structure (``extends``, ``steps_from``) fails as one ValidationError naming the key and file."""
import json
import re

import pytest

from postemb_rt.errors import ValidationError
from postemb_rt.train.config import TrainConfig


def _write(folder, name, keys):
    path = folder / name
    path.write_text(json.dumps(keys))
    return path


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
