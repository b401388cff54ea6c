"""Where ``postemb train`` writes: ``--out`` checked before the run (never the package's shipped
models, a file, or a folder with files unless --force), the model written whole or not at all,
readable by others as the umask says, and never under a registered model's version."""
import json
import os
import shutil
import stat

import pytest

from postemb_rt.cli import main
from tests.train.conftest import SMOKE


@pytest.fixture
def config(tiny_data, tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**SMOKE, "data": str(tiny_data), "steps": 2}))
    return path


@pytest.fixture
def no_training(monkeypatch):
    from postemb_rt.train import trainer

    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("trained before --out was checked"))


@pytest.mark.parametrize("out, words", [
    ("{shipped}", "is inside the package's shipped models"),
    ("{tmp}/afile", "is a file. Fix: name a folder"),
    ("{tmp}/full", "is not empty. Fix: a new folder, or --force to replace it"),
])
def test_an_out_the_run_must_not_write_is_refused_before_training(config, tmp_path, capsys, no_training, out, words):
    import postemb_rt

    shipped = os.path.join(os.path.dirname(postemb_rt.__file__), "models", "default")
    (tmp_path / "afile").write_text("")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    assert main(["train", "--config", str(config), "--out", out.format(shipped=shipped, tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_force_replaces_only_an_earlier_model_folder_never_one_holding_the_config_or_the_data(
        config, tiny_data, tmp_path, capsys, no_training, monkeypatch):
    """--force replaced any folder: `--out . --force` from a project folder deleted it whole, the config
    trained from included, once the run ended."""
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(config), "--out", ".", "--force"]) == 2
    assert "is not a model folder (no postemb.json)" in capsys.readouterr().err
    (tmp_path / "postemb.json").write_text("{}")  # a model folder, but it holds the config
    assert main(["train", "--config", "tiny.json", "--out", str(tmp_path), "--force"]) == 2
    assert "holds the --config file" in capsys.readouterr().err
    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    (model / "postemb.json").write_text("{}")
    (config.parent / "tiny.json").write_text(json.dumps({**SMOKE, "data": str(model / "data"), "steps": 2}))
    assert main(["train", "--config", str(config), "--out", str(model), "--force"]) == 2
    assert "holds the training data" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "postemb.json", "runs", "tiny.json"]


def test_a_run_that_fails_while_writing_leaves_the_old_model_whole(smoke_model, config, tmp_path, monkeypatch):
    """It wrote file by file into --out: a crash left the new projection beside the old adapters,
    loading under the old version."""
    import safetensors.torch

    out = tmp_path / "model"
    shutil.copytree(smoke_model[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return save(*a, **k)
    save = safetensors.torch.save_file
    monkeypatch.setattr(safetensors.torch, "save_file", second_fails)
    assert main(["train", "--config", str(config), "--out", str(out), "--force"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "tiny.json"]  # no temporary folder left
    mask = os.umask(0)
    os.umask(mask)
    for p in smoke_model[0].iterdir():  # safetensors writes 0600: a service account could not read the model
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask, p.name


def test_a_run_never_writes_a_registered_models_version(capsys):
    from postemb_rt.commands.train import _own_version
    from postemb_rt.model_dir import resolve

    shipped = resolve("default").config.model_version
    assert _own_version(shipped) == f"{shipped}-retrain" and "rename it in postemb.json to ship it" in \
        capsys.readouterr().out
    assert _own_version("smoke-mt50") == "smoke-mt50"
