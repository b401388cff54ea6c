"""A run that cannot train stops with an error that says why and how to fix it, and writes no model:
a loss that is no longer a number (diverged), a task with no posts or a single label."""
import json

import pytest

from postemb_rt.cli import main
from postemb_rt.train.config import TrainConfig
from postemb_rt.train.trainer import DivergedError, train
from tests.train.conftest import SMOKE

# the smallest run: no PCA start, no probe, a few steps
TINY = {**SMOKE, "steps": 4, "log_every": 1, "projection_init": "random", "probe_pairs": 0}


def test_a_run_whose_loss_diverges_stops_at_that_step_and_writes_no_model(tiny_data, tmp_path, capsys):
    """lr 1e4: the scale of the task loss overflows after the first step and the loss is NaN from the
    second on; the run went on and wrote a model of NaN weights (exit 0)."""
    cfg = {**TINY, "data": str(tiny_data), "lr": 1e4, "head_lr": 1e4}
    with pytest.raises(DivergedError, match=r"diverged at step [12] of 4: .* Fix: lower `lr` \(10000.0\) and "
                                            r"`head_lr` \(10000.0\)"):
        train(TrainConfig(**cfg), tmp_path / "model", progress=lambda m: None)
    assert not (tmp_path / "model").exists()
    config = tmp_path / "diverges.json"
    config.write_text(json.dumps(cfg))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "model")]) == 1  # a run that failed
    err = capsys.readouterr().err
    assert "diverged at step" in err and "Traceback" not in err and not (tmp_path / "model").exists()


@pytest.mark.parametrize("change, words", [
    ("empty", "`emotion` task has no posts (tweeteval/emotion/train_text.txt)"),
    ("one-label", "`emotion` task has 1 label ('anger'): a pair task needs at least 2"),
])
def test_a_task_without_posts_or_with_one_label_is_refused_naming_it(tiny_data, tmp_path, capsys, change, words):
    """An empty split was a ZeroDivisionError alone and silently got no step beside another task; one label was
    numpy's 'high <= 0' after the model loaded (a post's negative pair is another label's name)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    emotion = data / "tweeteval" / "emotion"
    if change == "empty":
        (emotion / "train_text.txt").write_text("")
        (emotion / "train_labels.txt").write_text("")
    else:
        (emotion / "mapping.txt").write_text("0\tanger\n")
        (emotion / "train_labels.txt").write_text("0\n" * 48)
    for tasks in (["emotion"], ["emoji", "emotion"]):
        config = tmp_path / "c.json"
        config.write_text(json.dumps({**TINY, "data": str(data), "tasks": tasks}))
        assert main(["train", "--config", str(config), "--plan"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Fix:" in err and "Traceback" not in err
