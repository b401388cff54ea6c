"""Resumable training (``train/checkpoint.py``): a run stopped by a signal or killed by a crash,
then resumed, ends with the same model as a run never stopped; a checkpoint resumes only its own
run, on its own data; the command says how to continue."""
import json
import logging
import re
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from postemb_rt.cli import main
from postemb_rt.errors import ValidationError
from postemb_rt.train import checkpoint, tasks
from postemb_rt.train.config import TrainConfig
from postemb_rt.train.trainer import train
from tests.train.conftest import SMOKE

# the similarity term over a stream of general posts: the stream's draws are resumed too. The probe loss at the start
# (restored on resume, compared) on 4 pairs per task, not 32: its passes were most of each run's forward passes
SMALL = {**SMOKE, "steps": 6, "log_every": 2, "probe_pairs": 4}
RUN = {**SMALL, "distill_weight": 0.5, "distill_posts": 4}
# the shipped recipe's shape: a teacher's similarity, direct, in-batch-negative and pair terms (their draws),
# per-task calibration, task balance, nested prefixes; and a learnt map to the teacher (its own tensors)
TEACHER = {**SMALL, "teacher": "base", "teacher_max_length": 32, "distill_posts": 8,
           "distill_weight": 1.0, "direct_weight": 1.0, "nce_weight": 0.5, "pair_weight": 1.0,
           "projection_init": "teacher", "calibration": "per_task", "task_balance": "tasks",
           "matryoshka_dims": [50, 16]}
LINEAR = {**SMALL, "teacher": "base", "teacher_max_length": 32, "distill_posts": 8,
          "direct_weight": 1.0, "direct_target": "linear"}


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


def test_a_run_stopped_by_sigterm_then_resumed_ends_as_the_run_never_stopped(tiny_data, tmp_path, straight):
    # a real `postemb train` process and a real signal, as a user or a scheduler sends it (a signal sent to
    # this test process would reach every model earlier tests left in it: tests/backends/test_openvino_signals.py)
    config, out = tmp_path / "run.json", tmp_path / "model"
    config.write_text(json.dumps({**RUN, "data": str(tiny_data)}))
    proc = subprocess.Popen([sys.executable, "-m", "postemb_rt.cli", "train", "--config", str(config), "--out",
                             str(out), "--threads", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "SIGTERM: stopping after this step" in err and "Continue: the same command with --resume" in err
    stopped = int(re.search(r"stopped after step (\d+) of 6", err).group(1))
    assert 2 <= stopped < 6 and not out.exists()  # the model folder is written only at the end
    assert checkpoint.peek(checkpoint.path_for(out)) == f"{stopped} of 6"

    said = []
    summary = train(TrainConfig(data=str(tiny_data), **RUN), out, progress=said.append, checkpoint_every=3600,
                    resume=True)
    assert any(m.startswith(f"resuming from step {stopped}/6") for m in said)
    assert summary["resumed_from_step"] == stopped
    assert not checkpoint.path_for(out).exists()  # removed once the model is written
    _same_model(straight[0], out, straight[1], summary)


def test_the_first_signal_asks_for_a_stop_the_second_sigint_stops_at_once_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with checkpoint.stop_on_signals(True) as asked:
        handler = signal.getsignal(signal.SIGTERM)
        assert handler is signal.getsignal(signal.SIGINT) and handler not in before
        handler(signal.SIGTERM, None)  # as the OS would call it
        assert asked == [signal.SIGTERM]
        with pytest.raises(KeyboardInterrupt):
            handler(signal.SIGINT, None)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with checkpoint.stop_on_signals(False) as asked:  # checkpoints off: signals do what they did
        assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("recipe", [RUN, TEACHER, LINEAR], ids=["frozen-base", "teacher-nested", "teacher-linear"])
def test_a_crashed_run_resumes_from_its_last_periodic_checkpoint(tiny_data, tmp_path, straight, recipe):
    if recipe is not RUN:
        straight = tmp_path / "straight", train(TrainConfig(data=str(tiny_data), **recipe), tmp_path / "straight",
                                                progress=lambda m: None)
    out = tmp_path / "model"

    def crash(message):
        if message.startswith("step 4/"):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):  # a checkpoint after every step (1 ns apart)
        train(TrainConfig(data=str(tiny_data), **recipe), out, progress=crash, checkpoint_every=1e-9)
    assert checkpoint.peek(checkpoint.path_for(out)) == "3 of 6"  # step 4 never finished
    summary = train(TrainConfig(data=str(tiny_data), **recipe), out, progress=lambda m: None, checkpoint_every=1e-9,
                    resume=True)
    _same_model(straight[0], out, straight[1], summary)


def test_a_checkpoint_resumes_only_its_own_run(tiny_data, tmp_path):
    out = tmp_path / "model"
    data = checkpoint.data_fingerprint(tasks.load_split(tiny_data, "train"))
    checkpoint.save(checkpoint.path_for(out), {
        "identity": checkpoint.identity(TrainConfig(data=str(tiny_data), **RUN), {"emoji": 1}, data), "step": 3})
    with pytest.raises(ValidationError, match=r"has the checkpoint of an interrupted run .*step 3 of 6.*--resume"):
        train(TrainConfig(data=str(tiny_data), **RUN), out, progress=lambda m: None, checkpoint_every=60)
    with pytest.raises(ValidationError, match=r"other settings or data \(lr: 0.003 there, 0.001 here; task anchors: "
                                              r"\{'emoji': 1\} there, .* here \(the data changed\)\)\. Fix:"):
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


def test_a_resume_on_other_data_of_the_same_sizes_is_refused_naming_what_changed(tiny_data, tmp_path, caplog):
    """The task sizes alone let a run resume on edited data; the data's fingerprint does not. A checkpoint
    of before the fingerprint resumes on the sizes alone, with a warning that says so."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cfg, out = TrainConfig(data=str(data), **RUN), tmp_path / "model"

    def crash(message):
        if message.startswith("step 2/"):
            raise RuntimeError("power cut")

    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg, out, progress=crash, checkpoint_every=1e-9)
    path = checkpoint.path_for(out)
    before = checkpoint.data_fingerprint(tasks.load_split(data, "train"))
    assert checkpoint._load(path)["identity"]["data"] == before
    emoji = data / "tweeteval" / "emoji" / "train_text.txt"
    original = emoji.read_text()
    emoji.write_text(original.replace("\n", " edited\n", 1))  # one row edited: every size as it was
    after = checkpoint.data_fingerprint(tasks.load_split(data, "train"))
    assert {p for p in before if before[p] != after[p]} == {"emoji"}
    files = re.escape("(tweeteval/emoji/train_text.txt, train_labels.txt and mapping.txt)")
    with pytest.raises(ValidationError, match=rf"other settings or data \(training data: other rows in emoji {files} "
                                              rf"than the run was trained on \(fingerprint {before['emoji']} there, "
                                              rf"{after['emoji']} here\)\)\. Fix: resume with the same config, data"):
        train(cfg, out, progress=lambda m: None, resume=True)

    emoji.write_text(original)
    state = checkpoint._load(path)
    del state["identity"]["data"]  # as an older version wrote it
    checkpoint.save(path, state)
    with caplog.at_level(logging.WARNING, logger="postemb_rt.train.checkpoint"):
        summary = train(cfg, out, progress=lambda m: None, checkpoint_every=1e-9, resume=True)
    assert summary["resumed_from_step"] == 1
    assert "records no fingerprint of its training data" in caplog.text
