"""Resumable training: the training loop's whole state, saved beside the model folder.

``<out>.checkpoint.pt`` (one file, written with ``durable.atomic_write``, so a kill leaves the
previous one whole) holds, after a finished step: the step count, every trained tensor
(adapters, projection, the loss's scale and offset, a learnt map to the teacher), AdamW's
moments, the learning-rate schedule, the numpy draws of pairs, stream posts and related pairs,
torch's RNG (dropout), the loss curve so far and the probe loss at the start. A resumed run
therefore takes the same steps on the same pairs as one that was never stopped: the weights
agree to float rounding (bit for bit where the thread count is the same).

A checkpoint only resumes the run that wrote it: ``identity`` (every config key but ``threads``,
the task sizes the data gave, and a fingerprint of the data itself: ``data_fingerprint``) must
match, else what differs is named. It is removed once the model folder is written.

Checkpoints written before the fingerprint (no ``data`` in their identity) are resumed, with a
warning that the data could not be checked: they still had to match the config and every task's
size, the shared data is public and fixed, and refusing them would throw away up to a whole run's
steps (75 minutes for the shipped recipe) for a change the size check alone misses only when a
file was edited in place row for row. Such a checkpoint's next save records the fingerprint.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import ValidationError

SUFFIX = ".checkpoint.pt"
FORMAT = 1
log = logging.getLogger(__name__)
# what each part of data_fingerprint covers (under the config's data root), for the error naming a changed one
DATA_PARTS = {"topic": "tweeteval/stance/*/train_text.txt and train_labels.txt, the targets' folder names",
              "emoji": "tweeteval/emoji/train_text.txt, train_labels.txt and mapping.txt",
              "emotion": "tweeteval/emotion/train_text.txt, train_labels.txt and mapping.txt",
              "sts": "stsb/stsb-en-train.csv"}


class Stopped(KeyboardInterrupt):
    """The run stopped on the signal ``signum`` after ``step`` steps; its state is in ``path``."""

    def __init__(self, step: int, path: Path, signum: int):
        super().__init__(f"stopped after step {step}")
        self.step, self.path, self.signum = step, path, signum


@contextmanager
def stop_on_signals(enabled: bool):
    """Yields a list that gets the number of each SIGINT / SIGTERM received inside the block, which
    then no longer stop the process at once: the training loop finishes its step, saves a
    checkpoint and stops (a second SIGINT raises KeyboardInterrupt at once). Python's handlers are
    back when the block ends. Not ``enabled``, or not in the main thread (where signals go): the
    signals do what they did before."""
    asked: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def ask(signum, frame):
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not asked:
            print(f"{signal.Signals(signum).name}: stopping after this step, to keep a checkpoint "
                  "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        asked.append(signum)

    before = {s: signal.signal(s, ask) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield asked
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def path_for(out: str | Path) -> Path:
    """The checkpoint of a run writing the model folder ``out``: beside it, never inside (the folder
    is swapped in whole at the end)."""
    out = Path(os.path.abspath(out))
    return out.with_name(out.name + SUFFIX)


def data_fingerprint(sd) -> dict[str, str]:
    """{part: 16 hex digits of a SHA-256} over the training data as the trainer reads it (``sd``: the
    train split's ``tasks.SplitData``): per labelled part (topic, emoji, emotion) its texts, labels and
    label names in order, and the STS-B train pairs with their scores (``DATA_PARTS`` names the
    files). Every part, whichever tasks the config trains: the hashtag task, the distillation stream
    and the PCA start read them all. Hashes what is in memory already (and STS-B's CSV read once
    more): 0.035 s for the shipped data (56,626 rows, 5.1 MB of JSON; 2-core machine, 2026-12-05)."""
    import hashlib
    import json

    from .data import read_sts

    parts = {name: [ds.texts, ds.labels, ds.names] for name, ds in
             (("topic", sd.topic), ("emoji", sd.emoji), ("emotion", sd.emotion))}
    parts["sts"] = list(read_sts(sd.sts_path, strict=sd.strict))
    return {name: hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] for name, rows in parts.items()}


def identity(cfg, sizes: dict, data: dict) -> dict:
    """What a resumed run must share with the run that wrote the checkpoint: every config key but
    ``threads`` (which only changes float rounding), the anchors per task the data gave, and the
    data's ``data_fingerprint``."""
    keys = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "threads"}
    return {"config": keys, "task_anchors": dict(sizes), "data": dict(data)}


def check_start(out: str | Path, resume: bool) -> Path:
    """Before any work: ``resume`` needs a checkpoint; a new run must not silently discard one."""
    path = path_for(out)
    if resume and not path.is_file():
        raise ValidationError(f"`--resume` found no checkpoint for --out {str(out)!r} (looked for {path}). Fix: drop "
                              "--resume to start a new run, or pass the --out of the interrupted run.")
    if not resume and path.exists():
        raise ValidationError(f"`--out` {str(out)!r} has the checkpoint of an interrupted run ({path}, step "
                              f"{peek(path)}). Fix: add --resume to continue it, or delete that file to start again.")
    return path


def peek(path: Path) -> str:
    """'<done> of <steps>' from a checkpoint, for messages; '?' when it cannot be read."""
    try:
        state = _load(path)
        return f"{state['step']} of {state['identity']['config']['steps']}"
    except Exception:  # noqa: BLE001 - a message only
        return "?"


def save(path: Path, state: dict) -> None:
    import torch

    from ..durable import atomic_write

    atomic_write(path, lambda tmp: torch.save({"format": FORMAT, **state}, tmp))


def load(path: Path, want: dict) -> dict:
    """The checkpoint at ``path``, refused unless its ``identity`` is ``want`` (one written before the
    data fingerprint: ``want`` but its ``data``, resumed with a warning; see the module docstring)."""
    try:
        state = _load(path)
    except Exception as exc:  # noqa: BLE001 - any damage: one message with the fix
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"damaged, or not a checkpoint: " \
            f"{type(exc).__name__}"  # not torch's advice to load it with weights_only=False
        raise ValidationError(f"`--resume`: the checkpoint {path} cannot be read ({why}). Fix: delete it and start "
                              "the run again.") from None
    if state.get("format") != FORMAT:
        raise ValidationError(f"`--resume`: the checkpoint {path} has format {state.get('format')!r}, this version "
                              f"reads {FORMAT}. Fix: delete it and start the run again.")
    have = state["identity"]
    unchecked = "data" not in have  # written before the data fingerprint
    if have != ({k: v for k, v in want.items() if k != "data"} if unchecked else want):
        diff = [f"{k}: {have['config'].get(k)!r} there, {v!r} here" for k, v in want["config"].items()
                if have["config"].get(k) != v]
        if have["task_anchors"] != want["task_anchors"]:
            diff.append(f"task anchors: {have['task_anchors']} there, {want['task_anchors']} here (the data changed)")
        changed = [p for p, h in want["data"].items() if not unchecked and have["data"].get(p) != h]
        if changed:
            there = ", ".join(str(have["data"].get(p)) for p in changed)
            diff.append(f"training data: other rows in {'; '.join(f'{p} ({DATA_PARTS.get(p, p)})' for p in changed)}"
                        f" than the run was trained on (fingerprint {there} there, "
                        f"{', '.join(want['data'][p] for p in changed)} here)")
        raise ValidationError(f"`--resume`: the checkpoint {path} was written by a run with other settings or data ("
                              f"{'; '.join(diff)}). Fix: resume with the same config, data and flags (only "
                              "--threads may differ), or delete the checkpoint to start again.")
    if unchecked:
        log.warning("`--resume`: the checkpoint %s records no fingerprint of its training data (written by an older "
                    "version): resumed on the config and the task sizes alone. If the data under the config's root "
                    "changed since, delete the checkpoint and start again.", path)
    return state


def _load(path: Path) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
