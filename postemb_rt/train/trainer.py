"""Multi-task fine-tuning: base encoder + LoRA -> masked mean pool -> linear to 50 -> L2.

One step = one task (drawn by temperature-scaled mixing, the whole schedule fixed by the
seed up front) and ``batch_size`` pairs of it; with ``task_batches`` "mixed", the same pairs
per task are dealt across the steps, so each step holds several tasks. Loss ``bce`` (the paper's): binary
cross-entropy on ``s * cos(a, b) + c`` with a learnt scale s and offset c (one pair for every
task, or with ``calibration`` "per_task" one per task: each task's own cosine threshold and
sharpness, as its single-task run has); ``contrastive`` (option): softmax over the batch's
distinct b texts (in-batch negatives), positives only.
``task_weight`` scales it beside the distillation terms. ``task_balance`` "tasks" weights each
pair by mean(n) / n_t, n_t its task's steps in the schedule: every task then carries the same
weight over the run instead of its share of the steps (one task: weight 1, the "pairs" run).

Distillation (``teacher``): a stronger sentence encoder embeds the general posts of the
train splits once (cached, ``teacher.py``); every step then adds ``distill_posts`` of them
to the task batch, with up to three terms on their 50-d embeddings: ``distill_weight``
(1 - Pearson r of in-batch cosines against the teacher's), ``direct_weight`` (1 - cosine
to the teacher's embedding reduced to 50-d by PCA on the pool, or through a learnt linear
map) and ``nce_weight`` (softmax over the stream's PCA targets: in-batch negatives).
``pair_weight`` adds ``pair_posts`` related pairs per step (half STS-B train pairs of every
score, half posts with one of their teacher-nearest neighbours in the pool; all STS-B pairs
if ``pair_neighbours`` is 0): 1 - Pearson r of the student's pair cosines against the
teacher's. Random posts are mostly unrelated, so the in-batch term says little about how
close two related texts are; this term does.
Without a teacher, ``distill_weight`` compares the step's anchors with the frozen base.

Nested dimensions (``matryoshka_dims``, e.g. [50, 32, 16, 8]): every term above is computed
on the first k components re-normalised, for each k, and summed with ``matryoshka_weights``
(``losses.py`` says what each term compares at k); the model directory then declares the
prefixes below the full dim in ``postemb.json`` (``matryoshka_dims``, what
``Encoder.encode(truncate_dim=k)`` accepts). Absent (or [projection_dim]): the loss is exactly
the un-nested one.

Output: a normal model directory (``postemb.json``, ``projection.safetensors``,
``adapters.safetensors``; the encoder borrowed from the pip package) plus
``train_summary.json`` (time, trained parameters, pairs per task, loss curve; a nested run adds
the probe loss of every prefix at the end, ``probe_loss_end_prefixes``).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from ..errors import PostEmbError, ValidationError
from . import tasks as T
from .config import TrainConfig, data_root_of, schedule, step_pairs
from .distill import _batches_to_tensors, _cached_pca, _lstsq_projection, general_posts, teacher_pairs, teacher_stream
from .losses import direct_term, nce_term, pair_term, similarity_term, task_loss, teacher_targets

log = logging.getLogger(__name__)

ADAPTERS_FILE = "adapters.safetensors"
SUMMARY_FILE = "train_summary.json"


class DivergedError(PostEmbError, RuntimeError):
    """The loss or a trained tensor stopped being finite: the run stops there and writes no model."""


def train(cfg: TrainConfig, out: str | Path, progress=print, checkpoint_every: float | None = None,
          resume: bool = False) -> dict:
    """Train and write the model directory ``out``, whole or not at all (``durable.new_folder``: an
    interrupted or failed run leaves ``out`` as it was). Returns the summary dict.

    ``checkpoint_every`` (seconds; None or 0: never): save the loop's state to ``<out>.checkpoint.pt``
    after the first step that ends that long after the last save (``checkpoint.py``); while the
    steps run, SIGINT or SIGTERM then stop the run after the current step, saving it, and raise
    ``checkpoint.Stopped`` (a second SIGINT stops at once). ``resume``: continue from it. The
    checkpoint is removed once ``out`` is written."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    from ..durable import new_folder
    from ..model_dir import CONFIG_FILE, PROJECTION_FILE, BASE_PACKAGE, PostEmbConfig, resolve
    from ..modeling import PostEmbModel
    from ..native import pack_padded
    from ..tokenization import PostTokenizer
    from . import checkpoint as ckpt
    from .lora import add_lora, adapter_state

    t_start = time.perf_counter()
    cfg.validate()
    ckpt_path = ckpt.check_start(out, resume) if checkpoint_every or resume else None
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(out)
    root = data_root_of(cfg)
    sd = T.load_split(root, "train")
    tasks = {t: T.build_task(sd, t) for t in cfg.tasks}
    sizes = {t: len(v) for t, v in tasks.items()}
    plan = schedule(cfg, sizes)
    probs = T.mixing_probabilities(sizes, cfg.mixing_temperature)
    progress(f"tasks (anchors): {sizes}; mixing p: { {t: round(p, 3) for t, p in probs.items()} }; steps {cfg.steps}")

    md = resolve(cfg.base)
    if md.config.projection_dim:
        raise ValidationError(f"`base` must be an encoder without a projection. Given: {cfg.base!r}.")
    model = PostEmbModel.from_model_dir(md)
    tok = PostTokenizer(md.tokenizer_path, cfg.max_length)
    hidden = md.config.hidden_size
    proj = nn.Linear(hidden, cfg.projection_dim)
    t_teacher = time.perf_counter()
    ts = teacher_stream(cfg, sd, progress) if cfg.teacher else None
    t_teacher = time.perf_counter() - t_teacher  # the one-time teacher cache, reported apart from training
    if ts is not None:
        progress(f"teacher {cfg.teacher}: {ts.info['pool']} posts, {ts.info['dim']}-d; its top {cfg.projection_dim} "
                 f"principal axes hold {ts.info['pca_explained']:.1%} of the variance")
    if cfg.projection_init == "teacher":
        rng = np.random.default_rng([cfg.seed, 2])
        pick = rng.permutation(len(ts.posts))[:cfg.pca_posts]
        w, b = _lstsq_projection(model, tok, [ts.posts[i] for i in pick], ts.pca[pick], pack_padded)
        with torch.no_grad():
            proj.weight.copy_(w)
            proj.bias.copy_(b)
    elif cfg.projection_init == "pca":
        rng = np.random.default_rng([cfg.seed, 2])
        # the same pool whichever tasks this run trains: single-task runs start from the multi-task run's projection
        pool = general_posts(sd)
        posts = [pool[i] for i in rng.permutation(len(pool))[:cfg.pca_posts]]
        w, b = _cached_pca(md, model, tok, posts, cfg, pack_padded, progress)
        with torch.no_grad():
            proj.weight.copy_(w)
            proj.bias.copy_(b)
    teacher = None
    if cfg.distill_weight > 0 and ts is None:  # the frozen base, 384-d, no projection
        teacher = PostEmbModel.from_model_dir(md).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    wrapped = add_lora(model.encoder, cfg.lora_targets, cfg.lora_layers, cfg.lora_rank, cfg.lora_alpha)
    model.projection = proj
    # the task loss's scale and offset: one entry shared by every task, or one per task
    head_of = {t: (i if cfg.calibration == "per_task" else 0) for i, t in enumerate(cfg.tasks)}
    n_heads = len(cfg.tasks) if cfg.calibration == "per_task" else 1
    steps_of = {t: plan.count(t) for t in cfg.tasks if t in plan}
    balance = ({t: float(np.mean(list(steps_of.values()))) / n for t, n in steps_of.items()}
               if cfg.task_balance == "tasks" else None)  # each task's pair weight; None: 1
    log_scale = nn.Parameter(torch.full((n_heads,), math.log(cfg.scale_init)))
    offset = nn.Parameter(torch.full((n_heads,), -0.5 * cfg.scale_init))
    adapter_params = [p for p in model.encoder.parameters() if p.requires_grad]
    head_params = list(proj.parameters()) + [log_scale, offset]
    pairs_of, pair_draws = None, []  # pair_draws: (pool of pairs, pairs drawn from it per step)
    if ts is not None and cfg.pair_weight:
        pairs_of = teacher_pairs(cfg, sd, ts)
        progress(f"pair term: {len(pairs_of['sts'])} STS-B train pairs, {len(pairs_of['neighbour'])} neighbour pairs")
        n_sts = cfg.pair_posts // 2 if len(pairs_of["neighbour"]) else cfg.pair_posts
        pair_draws = [(v, n) for v, n in ((pairs_of["sts"], n_sts), (pairs_of["neighbour"], cfg.pair_posts - n_sts))
                      if len(v)]
        if not pair_draws:
            raise ValidationError(f"`pair_weight` {cfg.pair_weight} has no pairs to draw: no STS-B train pair has both "
                                  f"sentences in the distillation pool (distill_pool {cfg.distill_pool}) and "
                                  f"pair_neighbours is {cfg.pair_neighbours}. Fix: raise distill_pool (0: every post) "
                                  "or set pair_neighbours >= 1.")
    to_teacher = None  # direct_target "linear": a map from the 50-d output to the teacher (training only)
    if ts is not None and cfg.direct_weight and cfg.direct_target == "linear":
        to_teacher = nn.Linear(cfg.projection_dim, ts.emb.shape[1])
        if ts.back is not None:  # start as the PCA targets' way back to the teacher's space
            with torch.no_grad():
                to_teacher.weight.copy_(torch.from_numpy(ts.back[0].T))
                to_teacher.bias.copy_(torch.from_numpy(ts.back[1]))
        head_params += list(to_teacher.parameters())

    def calibration_values(v):
        v = v.tolist()
        return v[0] if cfg.calibration == "shared" else dict(zip(cfg.tasks, v))

    n_trained = sum(p.numel() for p in adapter_params + head_params)
    opt = torch.optim.AdamW([{"params": adapter_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_frac * cfg.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (cfg.steps - s) / max(1, cfg.steps - warm))))
    probe_rng = np.random.default_rng([cfg.seed, 4])
    probe = {t: task.sample(probe_rng, cfg.probe_pairs) for t, task in tasks.items()} if cfg.probe_pairs else {}

    stream = general_posts(sd) if cfg.distill_posts and ts is None else []
    stream_rng = np.random.default_rng([cfg.seed, 5])
    pair_rng = np.random.default_rng([cfg.seed, 8])  # its own stream: pair_weight 0 leaves the other draws as they were
    dims = cfg.nested_dims()  # [(k, weight)]: every term below is summed over these prefixes (losses.py)
    if ts is not None:
        t_emb, t_pca = torch.from_numpy(ts.emb), torch.from_numpy(ts.pca)
        targets = teacher_targets(t_pca, dims)  # {k: the teacher's PCA-k unit targets}

    def teacher_loss(idx):
        """The distillation terms on the stream posts ``idx`` (indices into ts.posts)."""
        es = model(*_batches_to_tensors(tok, [ts.posts[i] for i in idx], pack_padded))[1]
        idx = torch.from_numpy(idx)
        terms = {}
        if cfg.distill_weight:
            terms["similarity"] = cfg.distill_weight * similarity_term(es, t_emb[idx], dims)
        if cfg.direct_weight:
            if to_teacher is None:
                terms["direct"] = cfg.direct_weight * direct_term(es, targets, idx, dims)
            else:  # one dim only (the config refuses nesting with a learnt map)
                got, want = nn.functional.normalize(to_teacher(es), dim=-1), t_emb[idx]
                terms["direct"] = cfg.direct_weight * (1.0 - (got * want).sum(-1)).mean()
        if cfg.nce_weight:
            terms["nce"] = cfg.nce_weight * nce_term(es, targets, idx, cfg.nce_temperature, dims)
        if pair_draws:
            pr = np.concatenate([v[pair_rng.integers(len(v), size=n)] for v, n in pair_draws])
            e = model(*_batches_to_tensors(tok, [ts.posts[i] for i in pr.ravel()], pack_padded))[1].view(len(pr), 2, -1)
            want = (t_emb[pr[:, 0]] * t_emb[pr[:, 1]]).sum(-1)
            terms["pair"] = cfg.pair_weight * pair_term(e[:, 0], e[:, 1], want, dims)
        return terms

    def pair_loss(pairs, heads, contrastive, distill=0.0, extra=(), weight=1.0, pair_w=None, nest=dims):
        # heads: each pair's entry of log_scale/offset (its task's, see head_of); pair_w: each
        # pair's weight (its task's, see balance), None: 1. nest: the prefixes summed over.
        # b texts are de-duplicated: a label task's batch encodes each label name once, and the
        # contrastive softmax runs over distinct b texts (a repeated label is not its own negative)
        heads = torch.tensor(heads)
        pair_w = None if pair_w is None else torch.tensor(pair_w)
        uniq: dict[str, int] = {}
        for p in pairs:
            uniq.setdefault(p.b, len(uniq))
        col = torch.tensor([uniq[p.b] for p in pairs])
        a_batch = _batches_to_tensors(tok, [p.a for p in pairs], pack_padded)
        ea = model(*a_batch)[1]
        eb = model(*_batches_to_tensors(tok, list(uniq), pack_padded))[1]
        y = torch.tensor([p.label for p in pairs])
        loss = weight * task_loss(ea, eb, col, y, log_scale.exp()[heads], offset[heads], pair_w, contrastive, nest)
        if distill:  # on the anchors (posts, sentences: never label names, which the tasks move)
            with torch.no_grad():
                ta = teacher(*a_batch)[1]
            if extra:  # plus general posts, so the term also sees texts outside the step's task
                x_batch = _batches_to_tensors(tok, list(extra), pack_padded)
                ea = torch.cat([ea, model(*x_batch)[1]])
                with torch.no_grad():
                    ta = torch.cat([ta, teacher(*x_batch)[1]])
            loss = loss + distill * similarity_term(ea, ta, nest)
        return loss

    def probe_losses(k=cfg.projection_dim):
        # BCE (the paper's loss) on the fixed probe pairs at prefix k (default: the full vector),
        # dropout off: comparable before/after
        model.eval()
        with torch.no_grad():
            got = {t: round(pair_loss(ps, [head_of[t]] * len(ps), False, nest=[(k, 1.0)]).item(), 4)
                   for t, ps in probe.items()}
        model.train()
        return got

    rng = np.random.default_rng([cfg.seed, 3])
    trained = {**{f"model.{n}": p for n, p in model.named_parameters() if p.requires_grad},
               "log_scale": log_scale, "offset": offset,
               **({f"to_teacher.{n}": p for n, p in to_teacher.named_parameters()} if to_teacher else {})}
    draws = {"pairs": rng, "stream": stream_rng, "related": pair_rng}
    identity = ckpt.identity(cfg, sizes, ckpt.data_fingerprint(sd)) if ckpt_path else None  # what a resume matches
    start, before = 0, 0.0  # steps done and loop seconds spent by the runs this one resumes
    if resume:
        state = ckpt.load(ckpt_path, identity)
        with torch.no_grad():
            for name, p in trained.items():
                p.copy_(state["trained"][name])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["schedule"])
        for name, g in draws.items():
            g.bit_generator.state = state["draws"][name]
        torch.set_rng_state(state["torch_rng"])
        start, before, probe_start = state["step"], state["loop_seconds"], state["probe_start"]
        seen, curve, window, term_window = state["seen"], state["curve"], state["window"], state["term_window"]
        progress(f"resuming from step {start}/{cfg.steps} ({ckpt_path})")
    else:
        probe_start = probe_losses()
        seen = {t: 0 for t in cfg.tasks}
        curve, window, term_window = [], [], {}

    def save_checkpoint(done):
        ckpt.save(ckpt_path, {
            "identity": identity, "step": done, "loop_seconds": before + time.perf_counter() - t_loop,
            "trained": {k: v.detach().clone() for k, v in trained.items()}, "optimizer": opt.state_dict(),
            "schedule": sched.state_dict(), "draws": {k: g.bit_generator.state for k, g in draws.items()},
            "torch_rng": torch.get_rng_state(), "probe_start": probe_start, "seen": seen, "curve": curve,
            "window": window, "term_window": term_window})

    def diverged(done, what):
        kept = f" The checkpoint {ckpt_path} resumes only these settings: delete it." if ckpt_path and \
            ckpt_path.exists() else ""
        return (f"training diverged at step {done} of {cfg.steps}: {what}; no model was written. Fix: lower `lr` "
                f"({cfg.lr}) and `head_lr` ({cfg.head_lr}) (defaults {TrainConfig.lr} and {TrainConfig.head_lr}), "
                f"or raise `warmup_frac` ({cfg.warmup_frac}).{kept}")

    model.train()
    progress(f"set-up {time.perf_counter() - t_start:.0f}s; {n_trained} trained parameters")
    t_loop = last_save = time.perf_counter()
    with ckpt.stop_on_signals(bool(ckpt_path and checkpoint_every)) as asked:  # [signal numbers] received
        for step, counts in enumerate(step_pairs(cfg, plan)):
            if step < start:
                continue
            pairs = [p for t, n in counts.items()
                     for p in tasks[t].sample(rng, n, positives_only=cfg.loss == "contrastive")]
            heads = [head_of[t] for t, n in counts.items() for _ in range(n)]
            pair_w = None if balance is None else [balance[t] for t, n in counts.items() for _ in range(n)]
            extra = [stream[i] for i in stream_rng.integers(len(stream), size=cfg.distill_posts)] if stream else ()
            loss = pair_loss(pairs, heads, cfg.loss == "contrastive", cfg.distill_weight if ts is None else 0.0, extra,
                             cfg.task_weight, pair_w)
            if ts is not None:
                # distinct posts: in-batch negatives are never the post itself
                n = min(cfg.distill_posts, len(ts.posts))
                terms = teacher_loss(stream_rng.choice(len(ts.posts), size=n, replace=False))
                for k, v in terms.items():
                    term_window.setdefault(k, []).append(v.item())
                loss = loss + sum(terms.values())
            if not torch.isfinite(loss):  # NaN gradients would make every weight NaN, and the model written NaN
                raise DivergedError(diverged(step + 1, f"the loss is {loss.item()}"))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(adapter_params + head_params, 1.0)
            opt.step()
            sched.step()
            bad = next((n for n, p in trained.items() if not torch.isfinite(p).all()), None)
            if bad:  # e.g. the loss's scale overflowed: finite loss, infinite weights
                raise DivergedError(diverged(step + 1, f"`{bad}` is not finite after the update"))
            for t, n in counts.items():
                seen[t] += n
            window.append(loss.item())
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                curve.append({"step": step + 1, "loss": float(np.mean(window)),
                              **{k: float(np.mean(v)) for k, v in term_window.items()}})
                window, term_window = [], {}
                per_step = (time.perf_counter() - t_loop) / (step + 1 - start)
                parts = "".join(f" {k} {curve[-1][k]:.4f}" for k in ("similarity", "direct", "nce", "pair")
                                if k in curve[-1])
                scales = "/".join(f"{v:.2f}" for v in log_scale.exp().tolist())
                progress(f"step {step + 1}/{cfg.steps} loss {curve[-1]['loss']:.4f}{parts} scale {scales} "
                         f"{per_step:.2f}s/step, eta {per_step * (cfg.steps - step - 1):.0f}s")
            stop = bool(asked) and step + 1 < cfg.steps
            due = bool(checkpoint_every) and time.perf_counter() - last_save >= checkpoint_every
            if ckpt_path is not None and step + 1 < cfg.steps and (stop or due):
                save_checkpoint(step + 1)
                last_save = time.perf_counter()
            if stop:
                raise ckpt.Stopped(step + 1, ckpt_path, asked[0])
    probe_end = probe_losses()
    progress(f"probe loss (BCE on {cfg.probe_pairs} fixed train pairs per task) before {probe_start} after {probe_end}")
    # each trained prefix's probe loss at the end (nested runs only; its first entry is probe_end)
    probe_prefixes = {k: probe_losses(k) for k, _ in dims} if len(dims) > 1 and probe else None
    train_seconds = time.perf_counter() - t_start - t_teacher + before

    proj_state = {k: v.detach().clone().contiguous() for k, v in proj.state_dict().items()}
    with new_folder(out) as tmp:  # whole or not at all: an interrupted run leaves --out as it was
        save_file(proj_state, str(tmp / PROJECTION_FILE))
        save_file(adapter_state(model.encoder), str(tmp / ADAPTERS_FILE))
        prefixes = [k for k, _ in dims if k < cfg.projection_dim]  # the serving side lists the prefixes below dim
        pcfg = PostEmbConfig(model_version=cfg.model_version, hidden_size=hidden, projection_dim=cfg.projection_dim,
                             normalize=True, max_length=md.config.max_length, encoder=f"pip:{BASE_PACKAGE}",
                             adapters=ADAPTERS_FILE, matryoshka_dims=prefixes or None)
        (tmp / CONFIG_FILE).write_text(pcfg.to_json())
        artefact = sum((tmp / f).stat().st_size for f in (CONFIG_FILE, PROJECTION_FILE, ADAPTERS_FILE))
        summary = {
            "model_version": cfg.model_version,
            "config": dataclasses.asdict(cfg),
            "data_root": str(root),
            "train_seconds": round(train_seconds, 1),
            "threads": cfg.threads,
            "trained_parameters": n_trained,
            "lora_layers_wrapped": len(wrapped),
            "artefact_bytes": artefact,
            "task_anchors": sizes,
            "mixing_probabilities": probs,
            "pairs_seen": seen,
            "task_balance": balance or {t: 1.0 for t in steps_of},  # each task's pair weight
            # a number ("shared") or {task: number} ("per_task")
            "final_scale": calibration_values(log_scale.exp()),
            "final_offset": calibration_values(offset),
            "probe_loss_start": probe_start,
            "probe_loss_end": probe_end,
            **({"probe_loss_end_prefixes": probe_prefixes} if probe_prefixes else {}),
            **({"resumed_from_step": start} if start else {}),
            "loss_curve": curve,
        }
        if ts is not None:
            summary["teacher"] = {**ts.info, "load_seconds": round(t_teacher, 1)}
        if pairs_of is not None:
            summary["pair_pool"] = {k: len(v) for k, v in pairs_of.items()}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    progress(f"trained {n_trained} parameters in {train_seconds:.0f}s; artefact {artefact / 1e6:.2f} MB -> {out} "
             f"(model_version {cfg.model_version})")
    return summary
