"""Build a TensorRT engine from an ONNX model exported with external pooling.

    python export/export_onnx.py --model default --out models/default-trt --pooling external --no-optimize
    python export/build_engine.py --onnx models/default-trt/model.onnx --out models/default-trt --fp16

The ONNX model must be float32 and hold standard ONNX operators only (export_onnx.py --no-optimize):
ONNX Runtime's fused operators (domain com.microsoft: Attention, SkipLayerNormalization, ...) and
its int8 are nothing TensorRT's ONNX parser takes, so they are refused (exit 2) before TensorRT.

Writes OUT/model.plan (the serialized engine) and OUT/engine.json (profile shapes,
precision, TensorRT version, GPU, source model version; see postemb_rt/engine_meta.py).
When OUT is not the ONNX file's directory, the model directory's other files
(postemb.json, tokenizer, projection, model.onnx) are copied there, so OUT is a complete
model directory for Encoder.from_pretrained(OUT, backend="tensorrt", device="cuda").

Shapes (batch x seq) of the one optimisation profile, trtexec style:
    --min-shape 1x1 --opt-shape 32x64 --max-shape 128x256     (every input)
    --max-shape input_ids:64x256,attention_mask:64x256         (named)
Defaults: min 1x1, opt 32x64 (kept within min and max), max --max-batch x the model's max_length.

An engine runs only under the TensorRT version and on the GPU generation that built it:
build on the machine (type) that serves. --dry-run checks the arguments and prints the
engine.json it would write, without TensorRT or a GPU.

Precision: --fp16 / --bf16 set TensorRT 10's BuilderFlag.FP16 / BF16 (weak typing).
TensorRT 11 removed those flags (strongly typed networks only): there, build from an ONNX
model already converted to fp16/bf16 and leave the flag off.

Exit status: 0 built; 1 TensorRT failed to parse or build; 2 bad arguments, or TensorRT /
CUDA missing.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import shutil
import sys
import time
from pathlib import Path

from postemb_rt.durable import atomic_write
from postemb_rt.engine_meta import EXPORT_COMMAND  # pure Python: imports neither tensorrt nor torch

EXPORT_FIX = f"Fix: {EXPORT_COMMAND} --out DIR, then --onnx DIR/model.onnx."
INSTALL_HINT = ("Fix: on a machine with an NVIDIA GPU and driver, pip install 'postemb_rt[gpu,tensorrt]' "
                "(TensorRT 10.x; see the README's GPU section).")


class BuildError(Exception):
    """TensorRT could not parse or build (exit status 1)."""


def parse_args(argv=None) -> argparse.Namespace:
    from postemb_rt.commands import Parser

    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True,
                   help="model.onnx written by export_onnx.py --pooling external --no-optimize")
    p.add_argument("--out", help="output directory (default: the ONNX file's directory)")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true", help="allow fp16 kernels (TensorRT 10 BuilderFlag.FP16)")
    prec.add_argument("--bf16", action="store_true", help="allow bf16 kernels (TensorRT 10 BuilderFlag.BF16)")
    p.add_argument("--min-shape", help="BATCHxSEQ or name:BATCHxSEQ,... (default 1x1)")
    p.add_argument("--opt-shape",
                   help="shape TensorRT tunes for (default 32x64, kept within --min-shape and --max-shape)")
    p.add_argument("--max-shape", help="largest shape served (default: --max-batch x the model's max_length)")
    p.add_argument("--max-batch", type=int, default=None, help="rows in the default --max-shape (default 128)")
    p.add_argument("--timing-cache", help="file to read layer timings from and save them to (speeds up rebuilds)")
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace limit in GiB (default 4)")
    p.add_argument("--dry-run", action="store_true", help="check arguments, print engine.json; no TensorRT")
    args = p.parse_args(argv)
    if not 0 < args.workspace_gib < math.inf:  # nan too
        p.error(f"--workspace-gib must be a finite number > 0. Given: {args.workspace_gib}.")
    return args


def precision_of(args) -> str:
    return "fp16" if args.fp16 else "bf16" if args.bf16 else "fp32"


def plan_build(args):
    """(model dir, out dir, profiles) from the arguments; ValidationError / ModelNotFoundError
    on bad input. Needs neither TensorRT nor a GPU."""
    from postemb_rt.engine_meta import DEFAULT_MAX_BATCH, build_profiles
    from postemb_rt.errors import ValidationError
    from postemb_rt.model_dir import load_model_dir

    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise ValidationError(f"`--onnx` must be an existing ONNX file. Given: {args.onnx!r}. {EXPORT_FIX}")
    md = load_model_dir(onnx.parent)
    if md.onnx_path is None or md.onnx_path.resolve() != onnx.resolve():
        named = f"names {md.onnx_path.name!r}" if md.onnx_path is not None else "names no ONNX file"
        raise ValidationError(f"`--onnx` {args.onnx!r} is not the ONNX model of its folder: the model there {named}. "
                              f"{EXPORT_FIX}")
    if md.config.onnx_pooling != "external":
        raise ValidationError(
            f"`--onnx` {args.onnx!r} was exported with onnx_pooling {md.config.onnx_pooling!r}; TensorRT builds from "
            f"the hidden-states graph and the runtime pools with the Triton kernel. {EXPORT_FIX}"
        )
    _check_graph(md, args.onnx)
    max_batch = DEFAULT_MAX_BATCH if args.max_batch is None else args.max_batch
    if args.max_batch is not None and args.max_shape:
        raise ValidationError(f"give `--max-batch` or `--max-shape`, not both. Given: --max-batch {args.max_batch} "
                              f"--max-shape {args.max_shape!r}.")
    profiles = build_profiles(md.config.max_length, args.min_shape, args.opt_shape, args.max_shape, max_batch)
    out = Path(args.out) if args.out else onnx.parent
    _check_out(out, args.out, onnx.parent)
    if args.timing_cache:
        _check_timing_cache(Path(args.timing_cache), args.timing_cache)
    return md, out, profiles


def _check_timing_cache(path: Path, given) -> None:
    """--timing-cache is read before the build and written after it: it must be able to be a file."""
    from postemb_rt.errors import ValidationError

    blocker = path if path.is_dir() else next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        what = "is a folder" if blocker == path else f"has a file on its way ({str(blocker)!r} is a file)"
        raise ValidationError(f"`--timing-cache` {given!r} {what}; the build reads the cache from it and saves it "
                              "there. Fix: name a file (absent, or an earlier build's cache) in a folder.")


def _check_graph(md, given) -> None:
    """--onnx must be a float32 graph of standard ONNX operators, the only kind TensorRT's ONNX parser
    takes: ONNX Runtime's fused operators (export_onnx.py's default transformer fusions, in the
    com.microsoft domain) and its int8 (MatMulInteger, DynamicQuantizeLinear) would fail only on the GPU."""
    import onnx
    from google.protobuf.message import DecodeError

    from postemb_rt.errors import ValidationError

    if md.config.precision != "fp32":
        raise ValidationError(f"`--onnx` {given!r} is a {md.config.precision} model (ONNX Runtime's quantization, "
                              f"which TensorRT's ONNX parser does not take). {EXPORT_FIX}")
    try:
        graph = onnx.load(str(md.onnx_path), load_external_data=False).graph
    except DecodeError as exc:
        raise ValidationError(f"`--onnx` {given!r} is not an ONNX model ({exc}). {EXPORT_FIX}") from None
    contrib: dict[str, set] = {}
    for n in graph.node:
        if n.domain not in ("", "ai.onnx"):
            contrib.setdefault(n.domain, set()).add(n.op_type)
    if contrib:
        ops = "; ".join(f"{d}: {', '.join(sorted(o))}" for d, o in sorted(contrib.items()))
        raise ValidationError(f"`--onnx` {given!r} holds ONNX Runtime's own fused operators, which TensorRT's ONNX "
                              f"parser does not know ({ops}). {EXPORT_FIX}")


def _check_out(out: Path, given, onnx_dir: Path) -> None:
    """--out: absent, empty, the ONNX file's folder, or an earlier build's (its engine.json): the build copies
    the model's files into it over any of the same name, so another model's folder would end up half each."""
    from postemb_rt.engine_meta import META_FILE
    from postemb_rt.errors import ValidationError

    if not out.exists() or out.resolve() == onnx_dir.resolve():
        return
    if not out.is_dir():
        what = "is a file"
    elif any(out.iterdir()) and not (out / META_FILE).is_file():
        what = f"is a folder of other files (no {META_FILE} of an earlier build)"
    else:
        return
    raise ValidationError(f"`--out` {given!r} {what}; the build copies the model's files into it (postemb.json, "
                          "tokenizer, projection, model.onnx), over any of the same name. Fix: an absent or empty "
                          "folder, the ONNX file's own folder (the default), or an earlier build's --out.")


def _meta(md, profiles, precision, argv, **built):
    from postemb_rt.engine_meta import EngineMeta

    return EngineMeta(precision=precision, inputs={k: v.as_dict() for k, v in profiles.items()},
                      hidden_size=md.config.hidden_size, model_version=md.config.model_version,
                      onnx_file=md.onnx_path.name, builder_args=list(argv), **built)


def build(md, profiles, precision: str, timing_cache: Path | None, workspace_bytes: int):
    """Serialize an engine with the TensorRT Python API. Returns (plan bytes, output dtype
    name, tensorrt version). Raises BuildError; exits through main() when TensorRT is missing."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    # TensorRT < 10 needs explicit batch asked for; 10+ has only explicit batch (flag deprecated).
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if major < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(md.onnx_path)):  # reads external weight files beside it too
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {md.onnx_path}: {errors}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(profiles):
        raise BuildError(f"{md.onnx_path} has inputs {names}; expected {sorted(profiles)}. Re-export it.")
    outputs = {network.get_output(i).name: network.get_output(i) for i in range(network.num_outputs)}
    from postemb_rt.engine_meta import OUTPUT

    if OUTPUT not in outputs:
        raise BuildError(f"{md.onnx_path} has outputs {sorted(outputs)}; expected {OUTPUT!r} "
                         f"({EXPORT_COMMAND}).")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # BuilderFlag.TF32 is on by default: float32 matmuls would round their inputs to 10-bit
        # mantissas, which is not float32 (fails the exact bar, max abs error <= 1e-5).
        config.clear_flag(trt.BuilderFlag.TF32)
    elif precision != "fp32":
        flag = getattr(trt.BuilderFlag, precision.upper(), None)
        if flag is None:
            raise BuildError(
                f"TensorRT {trt.__version__} has no BuilderFlag.{precision.upper()} (weak typing was removed in "
                f"TensorRT 11). Fix: convert model.onnx to {precision} (e.g. ModelOpt AutoCast, fp32 I/O kept) and "
                f"build without --{precision}, or use TensorRT 10.x."
            )
        config.set_flag(flag)
    profile = builder.create_optimization_profile()
    for name, p in profiles.items():
        profile.set_shape(name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    cache = None
    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.exists() else b""
        cache = config.create_timing_cache(data)  # b"": a new, empty cache
        config.set_timing_cache(cache, False)  # False: refuse a cache from another TensorRT / GPU

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError("TensorRT's build_serialized_network failed (see the TensorRT log above).")
    if cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))  # a Ctrl-C leaves the old one
    out_dtype = str(outputs[OUTPUT].dtype).rsplit(".", 1)[-1].lower()  # DataType.FLOAT -> "float"
    return bytes(plan), {"float": "float32", "half": "float16", "bf16": "bfloat16"}.get(out_dtype, out_dtype), \
        trt.__version__


def copy_model_dir(src: Path, out: Path) -> None:
    """Copy the model directory's files (not engines) so ``out`` is a complete model directory."""
    from postemb_rt.engine_meta import ENGINE_FILE, META_FILE

    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in (ENGINE_FILE, META_FILE):
            shutil.copy2(f, out / f.name)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from postemb_rt.engine_meta import ENGINE_FILE, file_sha256
    from postemb_rt.errors import PostEmbError

    precision = precision_of(args)
    try:
        md, out, profiles = plan_build(args)
    except PostEmbError as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 2
    p = next(iter(profiles.values()))
    print(f"profile (batch x seq): min {p.min[0]}x{p.min[1]}, opt {p.opt[0]}x{p.opt[1]}, max {p.max[0]}x{p.max[1]}; "
          f"precision {precision}", file=sys.stderr)  # stdout: --dry-run's engine.json alone
    if args.dry_run:
        print(_meta(md, profiles, precision, argv, tensorrt_version="(not built)", compute_capability="?",
                    device_name="?").to_json(), end="")
        return 0

    try:
        import tensorrt  # noqa: F401
    except ImportError:
        print(f"build_engine: error: the `tensorrt` Python package is not installed. {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        print("build_engine: error: TensorRT builds on a CUDA GPU and none is visible (torch.cuda.is_available() "
              f"is False). {INSTALL_HINT}", file=sys.stderr)
        return 2
    major, minor = torch.cuda.get_device_capability()
    start = time.perf_counter()
    try:
        plan, out_dtype, trt_version = build(md, profiles, precision,
                                             Path(args.timing_cache) if args.timing_cache else None,
                                             int(args.workspace_gib * 2**30))
    except BuildError as exc:
        print(f"build_engine: error: {exc}", file=sys.stderr)
        return 1
    if out.resolve() != md.path.resolve():
        copy_model_dir(md.path, out)
    engine_path = atomic_write(out / ENGINE_FILE, plan)
    meta = _meta(md, profiles, precision, argv, tensorrt_version=trt_version,
                 compute_capability=f"{major}.{minor}", device_name=torch.cuda.get_device_name(),
                 engine_sha256=file_sha256(engine_path), engine_bytes=len(plan), output_dtype=out_dtype,
                 onnx_sha256=file_sha256(md.onnx_path),
                 built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    meta.write(out)
    print(f"wrote {engine_path} ({len(plan) / 2**20:.1f} MiB, TensorRT {trt_version}, {meta.device_name}) and "
          f"{out / 'engine.json'} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
