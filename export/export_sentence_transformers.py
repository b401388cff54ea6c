"""Export a model as a sentence-transformers folder, loadable without postemb_rt, then check parity.

    python export/export_sentence_transformers.py --model default --out models/default-st

Writes OUT in the sentence-transformers layout, which ``SentenceTransformer(OUT)``,
text-embeddings-inference and a model hub read as they are:

    modules.json                      Transformer -> Pooling -> Dense (if a head) -> Normalize (if normalised)
    config.json, model.safetensors    the encoder, low-rank adapters merged into its weights
    tokenizer.json (+ its config)     the tokenizer, as the model uses it
    sentence_bert_config.json         max_seq_length, do_lower_case
    1_Pooling/config.json             the pooling mode (word_embedding_dimension, pooling_mode_* keys, include_prompt)
    2_Dense/{config.json,model.safetensors}   the projection (e.g. 384 -> 50, identity activation)
    config_sentence_transformers.json the model's prompts and similarity_fn_name (cosine unless it says),
                                      its matryoshka_dims (the prefixes truncate_dim takes: a postemb_rt
                                      key, which sentence-transformers ignores; Encoder reads it back),
                                      and its truncate_dim when it sets one (encode's default prefix, in both)

Then, when sentence-transformers is installed, embeds real posts with it and with
postemb_rt's torch backend and exits 3 if any cosine is below --min-cosine (default 0.99999)
or any element differs by more than --max-abs (default 1e-5), writing nothing (OUT appears only
once the check passes). Exit 2: the model cannot be loaded or written (the message says why).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
ACTIVATION_CLASSES = {"identity": "torch.nn.modules.linear.Identity", "tanh": "torch.nn.modules.activation.Tanh",
                      "relu": "torch.nn.modules.activation.ReLU", "gelu": "torch.nn.modules.activation.GELU",
                      "sigmoid": "torch.nn.modules.activation.Sigmoid", "silu": "torch.nn.modules.activation.SiLU"}


def main(argv=None) -> int:
    from postemb_rt.commands import Parser, at_least

    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default",
                   help="a registered name ('default', 'base', ...) or a model directory (default: default)")
    p.add_argument("--out", required=True, help="output folder (created; must be empty or absent)")
    p.add_argument("--parity-posts", type=at_least(1), default=64, help="real posts in the parity check (default 64)")
    p.add_argument("--min-cosine", type=at_least(-1, float), default=0.99999,
                   help="parity threshold: every post's cosine must reach it (default 0.99999)")
    p.add_argument("--max-abs", type=at_least(0, float), default=1e-5,
                   help="largest element difference allowed (default 1e-5)")
    args = p.parse_args(argv)

    from postemb_rt import PostEmbError
    from postemb_rt.durable import new_folder
    from postemb_rt.model_dir import resolve

    out = Path(args.out)
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise PostEmbError(f"`--out` {str(out)!r} is not an empty folder. Fix: pass a new folder.")
        src = resolve(args.model)
        # written and checked beside OUT, which appears only once the check passes (a failed export, a Ctrl-C or a
        # kill leaves nothing there; the next run removes what a killed one left beside it), with the umask's
        # permissions (a temporary folder is 0700 and safetensors writes 0600: no other user could read it), fsynced
        with new_folder(out) as tmp:
            write_st_folder(src, tmp)
            code = check_parity(src, tmp, args)
            if code:
                raise Refused(code)
    except Refused as exc:
        print(f"export_sentence_transformers: nothing written to {out}", file=sys.stderr)
        return exc.args[0]
    except PostEmbError as exc:
        print(f"export_sentence_transformers: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the OS refuses (permissions, a full disk): one line
        print(f"export_sentence_transformers: error: `--out` {args.out!r}: {exc.strerror or exc}. Fix: pass a folder "
              "this user may create and write.", file=sys.stderr)
        return 2
    print(f"wrote {out} ({src.config.model_version}: {src.config.pooling} pooling, dim {src.config.dim})")
    return 0


class Refused(Exception):
    """The parity check failed: nothing is written to OUT; args[0]: the exit status."""


def write_st_folder(md, out: Path) -> None:
    """Write the model directory ``md`` (its encoder, adapters merged, pooling, head and
    normalisation) into ``out`` as a sentence-transformers folder (see the module docstring)."""
    import torch
    from safetensors.torch import save_file

    from postemb_rt import ValidationError
    from postemb_rt.modeling import PostEmbModel

    if md.encoder_path is None:
        raise ValidationError(f"`--model` {str(md.path)!r} holds only an ONNX model. Fix: export its source "
                              "model directory.")
    cfg = md.config
    model = PostEmbModel.from_model_dir(md)  # merges the adapters: the folder holds plain encoder weights
    out.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(str(out), safe_serialization=True)
    tok_dir = md.tokenizer_path.parent
    for name in TOKENIZER_FILES:
        if (tok_dir / name).exists():
            shutil.copyfile(tok_dir / name, out / name)
    if (out / "tokenizer_config.json").exists():  # the folder's own max length, not the source's
        tc = json.loads((out / "tokenizer_config.json").read_text())
        tc["model_max_length"] = cfg.max_length
        (out / "tokenizer_config.json").write_text(json.dumps(tc, indent=2) + "\n")
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": cfg.max_length,
                                                    "do_lower_case": cfg.do_lower_case})
    modules = [("", "Transformer"), ("1_Pooling", "Pooling")]
    _write_json(out / "1_Pooling" / "config.json", {
        "word_embedding_dimension": cfg.hidden_size,
        "pooling_mode_cls_token": cfg.pooling == "cls",
        "pooling_mode_mean_tokens": cfg.pooling == "mean",
        "pooling_mode_max_tokens": cfg.pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": cfg.pooling == "lasttoken",
        "include_prompt": cfg.include_prompt,  # false: prompt tokens left out of the mean
    })
    layers = []
    if model.projection is not None:
        layers.append((model.projection, "identity"))
    for seq, d in zip(model.dense, cfg.dense or ()):
        layers.append((seq[0], d["activation"]))
    for linear, act in layers:
        folder = f"{len(modules)}_Dense"
        _write_json(out / folder / "config.json", {
            "in_features": linear.in_features, "out_features": linear.out_features,
            "bias": linear.bias is not None, "activation_function": ACTIVATION_CLASSES[act],
        })
        state = {"linear.weight": linear.weight.detach().contiguous()}
        if linear.bias is not None:
            state["linear.bias"] = linear.bias.detach().contiguous()
        save_file(state, str(out / folder / "model.safetensors"))
        modules.append((folder, "Dense"))
    if cfg.normalize:
        modules.append((f"{len(modules)}_Normalize", "Normalize"))
        (out / modules[-1][0]).mkdir(exist_ok=True)
    _write_json(out / "modules.json", [{"idx": i, "name": str(i), "path": path,
                                        "type": f"sentence_transformers.models.{t}"}
                                       for i, (path, t) in enumerate(modules)])
    _write_json(out / "config_sentence_transformers.json", {
        "__version__": {"pytorch": torch.__version__, "postemb_rt_model_version": cfg.model_version},
        "prompts": cfg.prompts or {}, "default_prompt_name": cfg.default_prompt_name,
        "similarity_fn_name": cfg.similarity_fn_name or "cosine",
        **({"matryoshka_dims": list(cfg.matryoshka_dims)} if cfg.matryoshka_dims else {}),
        **({"truncate_dim": cfg.truncate_dim} if cfg.truncate_dim is not None else {}),  # encode's default prefix
    })


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def check_parity(src, out: Path, args) -> int:
    """Embed real posts with sentence-transformers (reading ``out``) and with postemb_rt (reading
    ``src``): 0 when they agree, 3 when not; skipped (0) without sentence-transformers."""
    import numpy as np

    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("parity check skipped: sentence-transformers is not installed (pip install sentence-transformers)")
        return 0
    from postemb_rt import Encoder, fidelity

    texts, _ = fidelity.posts(args.parity_posts)
    want = Encoder.from_pretrained(src.path, backend="torch", device="cpu").encode(texts)
    st = SentenceTransformer(str(out), device="cpu")
    got = st.encode(texts, normalize_embeddings=src.config.normalize, batch_size=32)
    cos = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    err = float(np.abs(got - want).max())
    print(f"parity with sentence-transformers on {len(texts)} posts: min cosine {cos.min():.7f}, "
          f"max abs error {err:.2e} (thresholds {args.min_cosine}, {args.max_abs})")
    failed = []
    if not cos.min() >= args.min_cosine:  # `not >=`: a NaN (a non-finite vector) fails
        worst = int(np.argmin(cos))  # the first NaN, if any
        failed.append(f"post {worst} ({texts[worst][:80]!r}) has cosine {cos[worst]:.7f} < --min-cosine "
                      f"{args.min_cosine}")
    if not err <= args.max_abs:
        worst = int(np.abs(got - want).max(axis=1).argmax())  # the first NaN, if any
        failed.append(f"post {worst} ({texts[worst][:80]!r}) differs by {err:.2e} in one element > --max-abs "
                      f"{args.max_abs}")
    if failed:
        print(f"export_sentence_transformers: parity FAILED: {'; '.join(failed)}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
