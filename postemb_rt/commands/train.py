"""``postemb train --config CONFIG.json --out DIR``: fine-tune the post-embedding model.

The config is JSON with the fields of ``postemb_rt.train.config.TrainConfig`` (see
``configs/``). DIR becomes a model directory that ``Encoder.from_pretrained(DIR)`` loads.
``--plan`` prints the task mixing, steps per task and the nested prefixes (``matryoshka_dims``)
without training.
"""
from __future__ import annotations

import argparse
import json

from ..errors import ValidationError


def run(args) -> int:
    from ..train.config import TrainConfig, task_schedule_counts, task_sizes
    from ..train.trainer import train
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
    train(cfg, args.out, progress=lambda m: print(m, flush=True))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="fine-tune the 50-d post-embedding model", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config (JSON), e.g. configs/multitask.json")
    p.add_argument("--out", help="output model directory")
    p.add_argument("--steps", type=int, default=None,
                   help="override the config's steps (the model version then ends in -steps<N>)")
    p.add_argument("--threads", type=int, default=None,
                   help="override the config's torch threads (1 beats 2 when other jobs share 2 cores)")
    p.add_argument("--seed", type=int, default=None,
                   help="override the config's seed (also for its steps_from reference); "
                        "appends -seed<N> to the model version")
    p.add_argument("--plan", action="store_true", help="print task mixing and steps per task, then exit")
    p.set_defaults(func=run)
