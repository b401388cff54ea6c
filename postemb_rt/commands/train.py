"""``postemb train --config CONFIG.json --out DIR``: fine-tune the post-embedding model.

The config is JSON with the fields of ``postemb_rt.train.config.TrainConfig`` (see
``configs/``). DIR becomes a model directory that ``Encoder.from_pretrained(DIR)`` loads.
``--plan`` prints the task mixing, steps per task and the nested prefixes (``matryoshka_dims``)
without training. DIR is checked before the run (never inside the package's shipped models; not
a non-empty folder unless ``--force``, which replaces only an earlier run's model folder, one
holding neither the config nor the data) and written whole once it ends (an interrupted run leaves
it as it was). A run never writes a registered model's version: it gets ``-retrain``.

Every ``--checkpoint-every`` seconds (default 300; 0: never) the run's state is saved to
DIR.checkpoint.pt beside DIR. Ctrl-C or SIGTERM then stop the run after the current step, saving
it (Ctrl-C twice: at once); the same command with ``--resume`` continues it, taking the same
steps as a run never stopped. The checkpoint is removed when DIR is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..durable import check_writable
from ..errors import ValidationError
from ..model_dir import REGISTERED, resolve
from . import at_least


def run(args) -> int:
    from ..train.checkpoint import Stopped
    from ..train.config import TrainConfig, data_root_of, task_schedule_counts, task_sizes
    from ..train.trainer import DivergedError, train
    from ..train.tasks import mixing_probabilities

    cfg = TrainConfig.from_file(args.config, seed=args.seed)
    if args.seed is not None:
        cfg.model_version = f"{cfg.model_version}-seed{args.seed}"
    for flag, value in (("--steps", args.steps), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ValidationError(f"`{flag}` must be >= 1. Given: {value}.")
    if args.steps is not None and args.steps != cfg.steps:  # other weights: never the recipe's vector version
        cfg.steps, cfg.model_version = args.steps, f"{cfg.model_version}-steps{args.steps}"
    if args.threads is not None:
        cfg.threads = args.threads
    if args.plan:
        sizes = task_sizes(cfg)
        print(json.dumps({"steps": cfg.steps, "batch_size": cfg.batch_size, "task_anchors": sizes,
                          "mixing_probabilities": mixing_probabilities(sizes, cfg.mixing_temperature),
                          "steps_per_task": task_schedule_counts(cfg),
                          # the prefixes every loss term is summed over, and their weights (losses.py)
                          "matryoshka_dims": [k for k, _ in cfg.nested_dims()],
                          "matryoshka_weights": [w for _, w in cfg.nested_dims()]}, indent=2))
        return 0
    if not args.out:
        raise ValidationError("`--out` is required (the model directory to write), unless --plan. Given: none.")
    _check_out(Path(args.out), args.force, Path(args.config), data_root_of(cfg))  # before the run, not after it
    cfg.model_version = _own_version(cfg.model_version)
    try:
        train(cfg, args.out, progress=lambda m: print(m, flush=True), checkpoint_every=args.checkpoint_every,
              resume=args.resume)
    except DivergedError as exc:  # a run that started and failed: exit 1, as README's Commands say
        print(f"postemb train: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except Stopped as stop:
        print(f"stopped after step {stop.step} of {cfg.steps}; its state is in {stop.path}. Continue: the same "
              "command with --resume", file=sys.stderr, flush=True)
        return 128 + stop.signum
    if args.out in REGISTERED:
        print(f"note: `{args.out}` is also a registered model's name, which wins: load this run as ./{args.out}")
    return 0


def _check_out(out: Path, force: bool, config: Path, data: Path) -> None:
    """Refuse an ``--out`` the run could not (or must not) write, before any training: inside the
    package's shipped models, a file, a folder with files (``force``: only an earlier model folder, one
    that holds neither the ``config`` file nor the ``data`` root, since it is replaced whole), or a place
    this user may not create a folder in (the run writes a folder beside it, then renames it:
    durable.new_folder)."""
    shipped = Path(__file__).resolve().parents[1] / "models"
    where = out.resolve()
    if where == shipped or shipped in where.parents:
        raise ValidationError(f"`--out` {str(out)!r} is inside the package's shipped models ({shipped}). Fix: train "
                              "into a folder outside the package (e.g. ../runs/NAME); ship a run by copying its files "
                              "(configs/reproduce.sh ship).")
    if out.exists() and not out.is_dir():
        raise ValidationError(f"`--out` {str(out)!r} is a file. Fix: name a folder (new, or empty).")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ValidationError(f"`--out` {str(out)!r} is not empty. Fix: a new folder, or --force to replace it "
                                  "(whole, once the run has finished; an interrupted run leaves it as it is).")
        fix = "Fix: a new folder (e.g. ../runs/NAME); --force replaces only an earlier run's model folder."
        if not (out / "postemb.json").is_file():
            raise ValidationError(f"`--out` {str(out)!r} is not a model folder (no postemb.json): --force would "
                                  f"delete everything in it. {fix}")
        for what, path in (("the --config file", config), ("the training data", data)):
            if where == path.resolve() or where in path.resolve().parents:
                raise ValidationError(f"`--out` {str(out)!r} holds {what} ({path}), which --force would delete. "
                                      f"{fix}")
    check_writable(out, "--out", folder=True)


def _own_version(version: str) -> str:
    """``version``, or ``version-retrain`` when a registered model (the shipped ones) has it: a run of
    a shipped recipe never writes the shipped model's version, so their vectors never share one."""
    taken = {resolve(name).config.model_version for name in REGISTERED}
    if version not in taken:
        return version
    print(f"note: model_version {version!r} is a registered model's; this run writes {version}-retrain, so their "
          "vectors never share a version (rename it in postemb.json to ship it)", flush=True)
    return f"{version}-retrain"


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune the 50-d post-embedding model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (JSON), e.g. configs/multitask.json")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--steps", type=int, default=None,
                   help="override the config's steps (when they differ, the model version ends in -steps<N>)")
    p.add_argument("--threads", type=int, default=None,
                   help="override the config's torch threads (1 beats 2 when other jobs share 2 cores)")
    p.add_argument("--seed", type=int, default=None,
                   help="override the config's seed (also for its steps_from reference); "
                        "appends -seed<N> to the model version")
    p.add_argument("--plan", action="store_true", help="print task mixing and steps per task, then exit")
    p.add_argument("--force", action="store_true",
                   help="replace a non-empty --out (whole, once the run has finished): an earlier run's model "
                        "folder (postemb.json) only")
    p.add_argument("--checkpoint-every", type=at_least(0, float), default=300.0, metavar="SECONDS",
                   help="save the run's state to OUT.checkpoint.pt this often, and on Ctrl-C / SIGTERM "
                        "(default 300; 0: never)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run from OUT.checkpoint.pt (same config, data and flags)")
    p.set_defaults(func=run)
