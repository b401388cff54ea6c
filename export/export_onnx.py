"""Export a model to a self-contained ONNX model directory, then check parity (and, for int8,
fidelity).

    python export/export_onnx.py --model default --out models/default-onnx
    python export/export_onnx.py --model default --out models/default-int8 --precision int8 [--force]

Writes OUT/model.onnx (dynamic batch and sequence axes; ONNX Runtime transformer fusions
unless --no-optimize), OUT/tokenizer.json and OUT/postemb.json (and, with --pooling
external, OUT/projection.safetensors for a model with a projection). Then embeds real posts
with the torch model and with the exported model and exits non-zero (3) if any cosine
similarity is below --min-cosine (default 0.9999); OUT is written only when the check passes.

OUT is absent, an empty folder, or an earlier export (its postemb.json names an ONNX model and no
encoder): it is built beside itself and swapped in whole (postemb_rt.durable.new_folder), so it
holds exactly the files this export wrote, none of an earlier one's (a projection.safetensors of
--pooling external, an engine build_engine.py added: rebuild the engine). Any other folder, and
the source model's own, is refused (exit 2) and left as it is.

With --precision int8 the float32 export is then quantized (postemb_rt.onnx_export.quantize_int8)
and its fidelity to float32 is measured on real posts (postemb_rt.fidelity: mean and minimum
cosine, overlap@10 of nearest neighbours). Below the thresholds nothing is written to OUT and
the exit code is 3, unless --force, which writes it marked as forced. The measured fidelity is
stored in OUT/postemb.json, and Encoder.describe() reports it, with the onnxruntime version and
the int8 kernels it was measured with (``numerics``: MLAS "u8s8-vnni" on CPUs with VNNI, exact int32
sums; "u8s8-madd16" without, whose int16 pair sums can saturate). Loaded on the other kind of CPU,
the folder's fidelity is still used, with a warning: export on the kind of CPU that serves.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    from postemb_rt.onnx_export import DEFAULT_POOLING

    from postemb_rt.commands import Parser, at_least

    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default",
                   help="a registered name ('default', 'base', ...) or a model directory (default: default)")
    p.add_argument("--out", required=True,
                   help="output directory: new, empty, or an earlier export (replaced whole); see above")
    p.add_argument("--no-optimize", action="store_true",
                   help="skip ONNX Runtime's transformer graph fusions (its own operators, which TensorRT cannot "
                        "build from: pass it for build_engine.py)")
    p.add_argument("--pooling", choices=["graph", "external"], default=DEFAULT_POOLING,
                   help="graph: pooling, projection and normalisation inside the ONNX model; external: "
                        "the model ends at last_hidden_state and the runtime pools with the C++ kernel "
                        "(default: %(default)s, as fast on CPU: benchmarks/RESULTS.md)")
    p.add_argument("--parity-posts", type=at_least(1), default=256,
                   help="real posts (5/6 short, 1/6 long) in the parity check (default 256)")
    p.add_argument("--min-cosine", type=at_least(-1, float), default=0.9999,
                   help="parity threshold: every post's cosine must reach it (default 0.9999)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="fp32 (exact), or int8 (static scales from calibrated ranges, gated by the fidelity check) "
                        "(default: %(default)s)")
    p.add_argument("--fidelity-posts", type=at_least(11), default=None,
                   help="posts in the int8 fidelity check, at least 11 for its overlap@10 (default: "
                        "$POSTEMB_FIDELITY_POSTS, else postemb_rt.fidelity.DEFAULT_POSTS, 1200)")
    p.add_argument("--force", action="store_true",
                   help="with --precision int8: write it even if its fidelity misses the bar (marked forced)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from postemb_rt import PostEmbError
    from postemb_rt.durable import new_folder
    from postemb_rt.model_dir import resolve

    try:
        src = resolve(args.model)
        if src.config.encoder is None:
            raise PostEmbError(f"`--model` {args.model!r} is an ONNX export ({src.config.onnx}): it holds no encoder "
                               "to export from. Fix: pass the model it was exported from (a registered name or a "
                               "directory with an encoder).")
        out = Path(args.out)
        check_out(out, src.path)
        # staged beside OUT and swapped in whole once every check passed; a failed check, a Ctrl-C or an
        # error leaves OUT as it was, and what a killed run left there the next run removes
        with new_folder(out) as tmp:
            rc = export_checked(src, tmp / "fp32", args)
            if not rc and args.precision == "int8":
                rc = quantize_checked(tmp / "fp32", tmp / "int8", args)
            if rc:
                raise Refused(rc)
            for item in (tmp / args.precision).iterdir():
                item.replace(tmp / item.name)
            for name in ("fp32", "int8"):
                shutil.rmtree(tmp / name, ignore_errors=True)
        print(f"wrote {out / 'model.onnx'} ({args.precision}, {(out / 'model.onnx').stat().st_size / 2**20:.1f} MiB)")
        return 0
    except Refused as exc:
        print(f"export_onnx: nothing written to {out}.", file=sys.stderr)
        return exc.args[0]
    except PostEmbError as exc:
        print(f"export_onnx: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the OS refuses (permissions, a file on the way, a full disk): one line
        print(f"export_onnx: error: `--out` {args.out!r}: {exc.strerror or exc}. Fix: pass a folder this user may "
              "create and write.", file=sys.stderr)
        return 2


class Refused(Exception):
    """A check failed: nothing is written to OUT; args[0]: the exit status."""


def export_checked(src, out: Path, args) -> int:
    """Export ``src`` to float32 ONNX in ``out`` and check parity with the torch model: 0, or 3."""
    import numpy as np

    from postemb_rt import Encoder, fidelity
    from postemb_rt.onnx_export import export_onnx

    start = time.perf_counter()
    md = export_onnx(src, out, optimize=not args.no_optimize, pooling=args.pooling)
    print(f"exported {md.onnx_path.name} ({md.onnx_path.stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s")
    texts, _ = fidelity.posts(args.parity_posts)
    ref = Encoder.from_pretrained(src.path, backend="torch", device="cpu").encode(texts)
    got = Encoder.from_pretrained(md.path, backend="onnxruntime", device="cpu").encode(texts)
    cos = fidelity.cosines(ref, got)
    worst = int(np.argmin(cos))  # the first NaN, if any
    print(f"parity on {len(texts)} posts: min cosine {cos.min():.7f}, mean {cos.mean():.7f} "
          f"(threshold {args.min_cosine})")
    if not cos.min() >= args.min_cosine:  # a NaN fails
        print(f"export_onnx: parity FAILED: post {worst} ({texts[worst][:80]!r}) has cosine {cos[worst]:.7f}",
              file=sys.stderr)
        return 3
    return 0


def quantize_checked(fp32_dir: Path, out: Path, args) -> int:
    """Quantize the float32 export in ``fp32_dir`` to int8, measure its fidelity, and write it to
    ``out`` only if it clears the bar (or --force): 0, or 3 (nothing written to ``out``)."""
    import dataclasses

    import onnxruntime as ort

    from postemb_rt import Encoder, fidelity
    from postemb_rt.backends import backend_class
    from postemb_rt.model_dir import CONFIG_FILE, load_model_dir
    from postemb_rt.onnx_export import quantize_int8

    int8 = quantize_int8(load_model_dir(fp32_dir), fp32_dir / "int8")
    with Encoder.from_pretrained(fp32_dir, backend="onnxruntime", device="cpu") as ref, \
            Encoder(int8, backend_class("onnxruntime")(int8, device="cpu", precision="int8"),
                    "export_onnx.py fidelity check") as cand:
        f = fidelity.measure_encoders(ref, cand, *fidelity.posts(args.fidelity_posts))
    # MLAS's int8 dot product differs by CPU (exact int32 sums with VNNI, saturating int16 pair sums without):
    # f.numerics names the one its fidelity was measured with, and the source onnxruntime's version
    f = dataclasses.replace(f, source=f"{f.source}; onnxruntime {ort.__version__}")
    print(f"int8 fidelity: {f.summary()}; thresholds {fidelity.THRESHOLDS}")
    if not f.ok and not args.force:
        print(f"export_onnx: int8 fidelity below the bar ({'; '.join(f.failures())}). Fix: keep fp32, or pass "
              "--force to write it anyway.", file=sys.stderr)
        return 3
    if not f.ok:
        f = dataclasses.replace(f, forced=True)
        print(f"export_onnx: --force: writing an int8 model that misses the bar ({'; '.join(f.failures())})",
              file=sys.stderr)
    cfg = dataclasses.replace(int8.config, fidelity=f.to_dict())
    (int8.path / CONFIG_FILE).write_text(cfg.to_json())
    write_whole(int8.path, out)
    return 0


def check_out(out: Path, src: Path) -> None:
    """Refuse, before any work, an ``--out`` that the export must not replace: a file, the source
    model ``src`` (or a folder holding it), or a non-empty folder that is not an earlier export
    (postemb.json naming an ONNX model and no encoder). PostEmbError naming the path and the fix."""
    from postemb_rt import PostEmbError
    from postemb_rt.durable import read_json
    from postemb_rt.model_dir import CONFIG_FILE

    if out.exists() and not out.is_dir():
        raise PostEmbError(f"`--out` {str(out)!r} is a file. Fix: name a folder (new, or an earlier export's).")
    if not out.is_dir():
        return
    where = out.resolve()
    if where == src.resolve() or where in src.resolve().parents:
        raise PostEmbError(f"`--out` {str(out)!r} is the source model `--model` {str(src)!r} (or holds it), which "
                           "the export would replace. Fix: pass another folder.")
    cfg = read_json(out / CONFIG_FILE)
    earlier = isinstance(cfg, dict) and cfg.get("onnx") and cfg.get("encoder") is None
    if any(out.iterdir()) and not earlier:
        raise PostEmbError(f"`--out` {str(out)!r} is not empty and not an earlier export (no {CONFIG_FILE} naming "
                           "an ONNX model without an encoder); the export replaces OUT whole. Fix: pass a new or "
                           "empty folder, or an earlier export's.")


def write_whole(src: Path, out: Path) -> None:
    """The files of the temporary model directory ``src`` (moved: same file system) as the folder ``out``,
    built beside it and swapped in whole (durable.new_folder): none of what was there before is mixed in."""
    from postemb_rt.durable import new_folder

    with new_folder(out) as tmp:
        for item in src.iterdir():
            if item.is_file():
                item.replace(tmp / item.name)


if __name__ == "__main__":
    sys.exit(main())
