"""A relative `data` in a config is read relative to that config file, as `extends` and `steps_from` are,
whatever the working directory; the default (no `data`) stays POSTEMB_DATA or ../shared/data."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from postemb_rt.errors import ValidationError
from postemb_rt.train.config import TrainConfig, data_root_of, task_sizes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tiny_data, tmp_path):
    """tmp/proj/{data, configs/x.json with "data": "../data", configs/sub/child.json extending it}."""
    shutil.copytree(tiny_data, tmp_path / "proj" / "data")
    configs = tmp_path / "proj" / "configs"
    (configs / "sub").mkdir(parents=True)
    (configs / "x.json").write_text(json.dumps({"data": "../data", "steps": 3, "tasks": ["emoji"]}))
    (configs / "sub" / "child.json").write_text(json.dumps({"extends": "../x.json", "steps": 4}))
    return tmp_path / "proj"


@pytest.mark.parametrize("cwd", ["proj", "proj/configs", "."])
def test_relative_data_is_read_relative_to_the_config_file(project, monkeypatch, cwd):
    monkeypatch.chdir(project.parent / cwd)
    for name in ("x.json", "sub/child.json"):
        cfg = TrainConfig.from_file(project / "configs" / name)
        assert data_root_of(cfg).resolve() == (project / "data").resolve(), name
        assert task_sizes(cfg) == {"emoji": 48}


def test_relative_data_keeps_its_text_for_the_version_hash(project, tmp_path):
    """The vector version hashes the keys as written: the same recipe elsewhere gets the same version."""
    a = TrainConfig.from_file(project / "configs" / "x.json")
    moved = tmp_path / "elsewhere"
    shutil.copytree(project, moved)
    b = TrainConfig.from_file(moved / "configs" / "x.json")
    assert a.data == b.data == "../data" and a.model_version == b.model_version


def test_missing_relative_data_names_both_places_and_the_fix(project, monkeypatch):
    shutil.move(project / "data", project / "configs" / "data")  # where a cwd-relative reading from proj/ would look
    monkeypatch.chdir(project / "configs" / "sub")
    cfg = TrainConfig.from_file(project / "configs" / "x.json")
    with pytest.raises(ValidationError) as err:
        data_root_of(cfg)
    msg = str(err.value)
    assert "x.json" in msg and "'../data'" in msg and str((project / "data").resolve()) in msg, msg
    assert str((project / "configs" / "data").resolve()) in msg and "Fix:" in msg, msg


def test_cli_plan_from_another_working_directory(project):
    cmd = [sys.executable, "-m", "postemb_rt.cli", "train", "--config", "configs/x.json", "--plan"]
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(project)}
    out = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["task_anchors"] == {"emoji": 48}


def test_a_missing_task_file_says_every_task_is_read_whichever_tasks_are_trained(project, capsys):
    """A data root with the emoji task only, for an emoji-only config: the folder is right, a file is missing."""
    shutil.rmtree(project / "data" / "tweeteval" / "stance")
    from postemb_rt.cli import main

    assert main(["train", "--config", str(project / "configs" / "x.json"), "--plan"]) == 2
    err = capsys.readouterr().err
    assert "stance/mapping.txt: file not found" in err and "whichever `tasks`" in err and "Fix: add" in err, err


def test_an_inherited_steps_from_is_read_relative_to_the_file_that_gives_it(tiny_data, tmp_path, monkeypatch):
    """As `data` and `extends`: a path key means what it meant in the file that wrote it."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "multi.json").write_text(json.dumps({"data": str(tiny_data), "steps": 40}))
    (tmp_path / "a" / "single.json").write_text(json.dumps({"data": str(tiny_data), "tasks": ["emoji"],
                                                            "steps_from": "multi.json"}))
    (tmp_path / "b" / "child.json").write_text(json.dumps({"extends": "../a/single.json", "lora_rank": 4}))
    monkeypatch.chdir(tmp_path / "b")
    child = TrainConfig.from_file(tmp_path / "b" / "child.json")
    single = TrainConfig.from_file(tmp_path / "a" / "single.json")
    assert child.steps == single.steps and child.lora_rank == 4
