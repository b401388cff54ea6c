"""Resumable training (``train/checkpoint.py``): a run stopped by a signal or killed by a crash,
then resumed, ends with the same model as a run never stopped; a checkpoint resumes only its own
run; the command says how to continue."""
import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from postemb_rt.cli import main
from postemb_rt.errors import ValidationError
from postemb_rt.train import checkpoint
from postemb_rt.train.config import TrainConfig
from postemb_rt.train.trainer import train
from tests.train.conftest import SMOKE

# the similarity term over a stream of general posts: the stream's draws are resumed too
RUN = {**SMOKE, "steps": 6, "log_every": 2, "distill_weight": 0.5, "distill_posts": 4}


def _weights(folder):
    return {**load_file(str(folder / "adapters.safetensors")), **load_file(str(folder / "projection.safetensors"))}


def _same_model(a, b, summary_a, summary_b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:  # same thread count: the same arithmetic in the same order
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)
    assert summary_a["pairs_seen"] == summary_b["pairs_seen"]
    assert [c["step"] for c in summary_a["loss_curve"]] == [c["step"] for c in summary_b["loss_curve"]]
    for ca, cb in zip(summary_a["loss_curve"], summary_b["loss_curve"]):
        assert ca["loss"] == pytest.approx(cb["loss"], abs=1e-5)
    assert summary_a["probe_loss_start"] == summary_b["probe_loss_start"]


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "model"
    return out, train(TrainConfig(data=str(tiny_data), **RUN), out, progress=lambda m: None)


def test_a_run_stopped_by_sigint_then_resumed_ends_as_the_run_never_stopped(tiny_data, tmp_path, straight):
    out = tmp_path / "model"

    def progress(message):
        if message.startswith("step 2/"):
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: handled, the step ends first

    with pytest.raises(checkpoint.Stopped) as stopped:
        train(TrainConfig(data=str(tiny_data), **RUN), out, progress=progress, checkpoint_every=3600)
    assert (stopped.value.step, stopped.value.signum) == (2, signal.SIGINT)
    assert stopped.value.path == checkpoint.path_for(out) and stopped.value.path.is_file()
    assert not out.exists()  # the model folder is written only at the end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's handler is back

    said = []
    summary = train(TrainConfig(data=str(tiny_data), **RUN), out, progress=said.append, checkpoint_every=3600,
                    resume=True)
    assert any(m.startswith("resuming from step 2/6") for m in said)
    assert summary["resumed_from_step"] == 2
    assert not checkpoint.path_for(out).exists()  # removed once the model is written
    _same_model(straight[0], out, straight[1], summary)


def test_a_crashed_run_resumes_from_its_last_periodic_checkpoint(tiny_data, tmp_path, straight):
    out = tmp_path / "model"

    def crash(message):
        if message.startswith("step 4/"):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):  # a checkpoint after every step (1 ns apart)
        train(TrainConfig(data=str(tiny_data), **RUN), out, progress=crash, checkpoint_every=1e-9)
    assert checkpoint.peek(checkpoint.path_for(out)) == "3 of 6"  # step 4 never finished
    summary = train(TrainConfig(data=str(tiny_data), **RUN), out, progress=lambda m: None, checkpoint_every=1e-9,
                    resume=True)
    _same_model(straight[0], out, straight[1], summary)


def test_a_checkpoint_resumes_only_its_own_run(tiny_data, tmp_path):
    out = tmp_path / "model"
    checkpoint.save(checkpoint.path_for(out), {
        "identity": checkpoint.identity(TrainConfig(data=str(tiny_data), **RUN), {"emoji": 1}), "step": 3})
    with pytest.raises(ValidationError, match=r"has the checkpoint of an interrupted run .*step 3 of 6.*--resume"):
        train(TrainConfig(data=str(tiny_data), **RUN), out, progress=lambda m: None, checkpoint_every=60)
    with pytest.raises(ValidationError, match=r"other settings \(lr: 0.003 there, 0.001 here; task anchors"):
        train(TrainConfig(data=str(tiny_data), **{**RUN, "lr": 1e-3}), out, progress=lambda m: None, resume=True)
    checkpoint.path_for(out).write_bytes(b"not a checkpoint")
    with pytest.raises(ValidationError, match="cannot be read .* Fix: delete it"):
        train(TrainConfig(data=str(tiny_data), **RUN), out, progress=lambda m: None, resume=True)
    with pytest.raises(ValidationError, match="`--resume` found no checkpoint .* Fix: drop --resume"):
        train(TrainConfig(data=str(tiny_data), **RUN), tmp_path / "other", progress=lambda m: None, resume=True)


@pytest.fixture
def config(tiny_data, tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps({**SMOKE, "data": str(tiny_data), "steps": 2}))
    return path


def test_the_command_says_where_the_state_is_and_how_to_continue(config, tmp_path, capsys, monkeypatch):
    from postemb_rt.train import trainer

    seen = {}

    def stopped(cfg, out, progress, checkpoint_every, resume):
        seen.update(every=checkpoint_every, resume=resume)
        raise checkpoint.Stopped(1, checkpoint.path_for(out), signal.SIGTERM)

    monkeypatch.setattr(trainer, "train", stopped)
    rc = main(["train", "--config", str(config), "--out", str(tmp_path / "m"), "--resume"])
    assert rc == 128 + signal.SIGTERM
    assert seen == {"every": 300.0, "resume": True}  # the default: every five minutes
    err = capsys.readouterr().err
    assert f"stopped after step 1 of 2; its state is in {tmp_path / 'm.checkpoint.pt'}" in err
    assert "Continue: the same command with --resume" in err


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_a_checkpoint_interval_that_is_not_a_finite_number_of_seconds_is_refused(config, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--config", str(config), "--out", str(tmp_path / "m"), f"--checkpoint-every={value}"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"--checkpoint-every: must be a number >= 0. Given: '{value}'" in err and "Fix:" in err
