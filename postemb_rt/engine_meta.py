"""``engine.json``: what a serialized TensorRT engine was built from and for.

Written by ``export/build_engine.py`` next to the engine file, read and checked by the
``tensorrt`` backend before it deserializes anything. Both sides import this module; the
runtime never imports export code. Pure Python (no tensorrt, no torch), so every rule here
is tested on CPU.

An engine directory is an ONNX model directory exported with ``--pooling external``
(``model.onnx`` ends at ``last_hidden_state``, ``postemb.json``, ``tokenizer.json``,
``projection.safetensors``) plus ``model.plan`` and ``engine.json``.

A TensorRT engine runs only under the TensorRT version that built it and on GPUs of the
compute capability it was built on, and only for input shapes inside its optimisation
profile; ``check_meta`` and ``check_shape`` turn each of those into an
``EngineMismatchError`` that names what differs and the command that rebuilds it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .durable import atomic_write
from .errors import EngineMismatchError, ValidationError

META_FILE = "engine.json"
ENGINE_FILE = "model.plan"
FORMAT_VERSION = 1
INPUTS = ("input_ids", "attention_mask")  # both int64 (batch, seq), see onnx_export
OUTPUT = "last_hidden_state"  # (batch, seq, hidden)
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_MAX_BATCH = 128
DEFAULT_OPT = (32, 64)  # (batch, seq): a typical batch of short posts
# the ONNX model an engine builds from: hidden states, without ONNX Runtime's fused (com.microsoft)
# operators, which TensorRT's ONNX parser does not know
EXPORT_COMMAND = "python export/export_onnx.py --pooling external --no-optimize"

Shape = tuple[int, int]  # (batch, seq)


@dataclass(frozen=True)
class ShapeProfile:
    """One input's optimisation profile: (batch, seq) at least, typical, at most."""

    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _parse_dims(text: str, flag: str, given: str) -> Shape:
    m = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not m:
        raise ValidationError(f"`{flag}` shapes must be BATCHxSEQ (e.g. 32x128). Given: {given!r}.")
    b, s = int(m.group(1)), int(m.group(2))
    if b < 1 or s < 1:
        raise ValidationError(f"`{flag}` dimensions must be >= 1. Given: {given!r}.")
    return b, s


def parse_shape_spec(spec: str | None, flag: str, inputs=INPUTS) -> dict[str, Shape]:
    """Parse a trtexec-style shape flag into {input name: (batch, seq)}.

    ``"32x128"`` applies to every input; ``"input_ids:32x128,attention_mask:32x128"`` names
    them (an input left out takes the shape of the others). None or "" -> {}.
    """
    if not spec:
        return {}
    out: dict[str, Shape] = {}
    for part in spec.split(","):
        if ":" in part:
            name, dims = part.rsplit(":", 1)
            name = name.strip()
            if name not in inputs:
                raise ValidationError(f"`{flag}` names input {name!r}; the model's inputs are {list(inputs)}. "
                                      f"Given: {spec!r}.")
            if name in out:
                raise ValidationError(f"`{flag}` gives input {name!r} twice. Given: {spec!r}.")
            out[name] = _parse_dims(dims, flag, spec)
        else:
            if len(spec.split(",")) != 1:
                raise ValidationError(f"`{flag}` mixes named and unnamed shapes. Given: {spec!r}.")
            shape = _parse_dims(part, flag, spec)
            return {name: shape for name in inputs}
    if out:  # inputs not named take the named shape: ids and mask always travel together
        first = next(iter(out.values()))
        out = {name: out.get(name, first) for name in inputs}
    return out


def build_profiles(max_length: int, min_spec: str | None = None, opt_spec: str | None = None,
                   max_spec: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                   inputs=INPUTS) -> dict[str, ShapeProfile]:
    """The optimisation profile of every input, from the shape flags and the model.

    Defaults: min 1x1, opt 32x64 (kept within min and max), max ``max_batch`` x ``max_length``.
    Rules (each a ValidationError naming the flag and value): min <= opt <= max in both
    dimensions; max seq <= the model's max_length (the tokenizer never makes longer rows);
    input_ids and attention_mask share one profile (the encoder reads them together).
    """
    if max_batch < 1:
        raise ValidationError(f"`--max-batch` must be >= 1. Given: {max_batch}.")
    specs = {"--min-shape": parse_shape_spec(min_spec, "--min-shape", inputs),
             "--opt-shape": parse_shape_spec(opt_spec, "--opt-shape", inputs),
             "--max-shape": parse_shape_spec(max_spec, "--max-shape", inputs)}
    for flag, shapes in specs.items():
        if len(set(shapes.values())) > 1:
            raise ValidationError(f"`{flag}` must give input_ids and attention_mask the same shape. "
                                  f"Given: {shapes}.")
    pick = lambda flag, default: next(iter(specs[flag].values()), default)  # noqa: E731
    hi = pick("--max-shape", (max_batch, max_length))
    lo = pick("--min-shape", (1, 1))
    # the default opt within the given min and max (a flag's own value is checked below, never moved)
    mid = pick("--opt-shape", tuple(max(lo[d], min(DEFAULT_OPT[d], hi[d])) for d in (0, 1)))
    if hi[1] > max_length:
        raise ValidationError(f"`--max-shape` seq must be <= the model's max_length ({max_length}): the "
                              f"tokenizer truncates there. Given: {hi[0]}x{hi[1]}.")
    for dim, what in ((0, "batch"), (1, "seq")):
        if not lo[dim] <= mid[dim] <= hi[dim]:
            raise ValidationError(f"shape profile {what} must satisfy min <= opt <= max. Given: min {lo[dim]}, "
                                  f"opt {mid[dim]}, max {hi[dim]}.")
    profile = ShapeProfile(lo, mid, hi)
    return {name: profile for name in inputs}


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class EngineMeta:
    """Contents of ``engine.json``."""

    precision: str
    inputs: dict  # {name: {"min": [b, s], "opt": [b, s], "max": [b, s]}}
    hidden_size: int
    model_version: str
    tensorrt_version: str
    compute_capability: str  # "9.0"
    device_name: str
    engine_file: str = ENGINE_FILE
    engine_sha256: str = ""
    engine_bytes: int = 0
    onnx_file: str = "model.onnx"
    onnx_sha256: str = ""
    output: str = OUTPUT
    output_dtype: str = "float32"  # of last_hidden_state as the engine returns it
    built_at: str = ""
    builder_args: list = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    def write(self, directory: Path) -> Path:
        path = Path(directory) / META_FILE
        return atomic_write(path, self.to_json())  # a reader never sees half a file

    @classmethod
    def read(cls, directory: Path) -> "EngineMeta":
        path = Path(directory) / META_FILE
        if not path.exists():
            raise EngineMismatchError(f"`{directory}` has no {META_FILE}. Fix: {rebuild_hint(directory)}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise EngineMismatchError(f"`{path}` is not valid JSON: {exc}. Fix: {rebuild_hint(directory)}") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                         and f.name not in raw)
        if unknown or missing:
            raise EngineMismatchError(f"`{path}` has unknown keys {unknown} / lacks keys {missing}. "
                                      f"Fix: {rebuild_hint(directory)}")
        if raw.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise EngineMismatchError(f"`{path}` has format_version {raw['format_version']}; this postemb_rt reads "
                                      f"up to {FORMAT_VERSION}. Upgrade postemb_rt or {rebuild_hint(directory)}")
        meta = cls(**raw)
        if meta.precision not in PRECISIONS:
            raise EngineMismatchError(f"`{path}` has precision {meta.precision!r}; known: {list(PRECISIONS)}.")
        for name in INPUTS:
            if name not in meta.inputs:
                raise EngineMismatchError(f"`{path}` has no profile for input {name!r}. "
                                          f"Fix: {rebuild_hint(directory)}")
        return meta

    def profile(self, name: str = INPUTS[0]) -> ShapeProfile:
        p = self.inputs[name]
        return ShapeProfile(tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]))


def rebuild_hint(directory, precision: str | None = None) -> str:
    flag = f" --{precision}" if precision in ("fp16", "bf16") else ""
    return (f"rebuild the engine on this machine: python export/build_engine.py --onnx {directory}/model.onnx "
            f"--out {directory}{flag} (model.onnx from {EXPORT_COMMAND}).")


def check_meta(meta: EngineMeta, directory, *, model_version: str, hidden_size: int,
               tensorrt_version: str | None = None, compute_capability: str | None = None,
               onnx_sha256: str | None = None) -> None:
    """Raise EngineMismatchError listing every way ``meta`` does not fit this model and
    machine (model version, hidden size, TensorRT version, GPU compute capability, the
    model.onnx beside it: re-exported since the build, under the same model version).
    ``tensorrt_version`` / ``compute_capability`` / ``onnx_sha256`` None: not checked (no
    tensorrt / GPU / model.onnx; an engine.json without ``onnx_sha256`` is not checked either)."""
    problems = []
    if onnx_sha256 is not None and meta.onnx_sha256 and meta.onnx_sha256 != onnx_sha256:
        problems.append("model.onnx: the engine was built from another model.onnx (sha256 differs: exported again "
                        "since the build)")
    if meta.model_version != model_version:
        problems.append(f"model_version: engine built from {meta.model_version!r}, postemb.json says {model_version!r}")
    if meta.hidden_size != hidden_size:
        problems.append(f"hidden_size: engine {meta.hidden_size}, postemb.json {hidden_size}")
    if tensorrt_version is not None and meta.tensorrt_version != tensorrt_version:
        problems.append(f"TensorRT: engine built with {meta.tensorrt_version}, installed {tensorrt_version} "
                        "(serialized engines only load under the version that built them)")
    if compute_capability is not None and meta.compute_capability != compute_capability:
        problems.append(f"GPU: engine built for compute capability {meta.compute_capability} "
                        f"({meta.device_name}), this GPU is {compute_capability}")
    if problems:
        raise EngineMismatchError(f"`{Path(directory) / META_FILE}` does not match: " + "; ".join(problems)
                                  + f". Fix: {rebuild_hint(directory, meta.precision)}")


def check_shape(meta: EngineMeta, directory, seq: int) -> None:
    """Raise EngineMismatchError when a batch's padded length ``seq`` lies outside the
    engine's profile (rows are split by the backend, so batch size never fails)."""
    p = meta.profile()
    if not p.min[1] <= seq <= p.max[1]:
        raise EngineMismatchError(
            f"batch seq length {seq} is outside the engine's profile (seq {p.min[1]}..{p.max[1]}, "
            f"`{Path(directory) / META_FILE}`). Fix: pass max_length <= {p.max[1]} to Encoder.from_pretrained, or "
            f"rebuild with --max-shape {p.max[0]}x{seq}: {rebuild_hint(directory, meta.precision)}"
        )


def row_chunks(batch: int, max_batch: int) -> list[tuple[int, int]]:
    """[(start, stop)] slices of at most ``max_batch`` rows covering ``batch`` rows."""
    if max_batch < 1:
        raise ValueError(f"`max_batch` must be >= 1. Given: {max_batch}.")
    return [(i, min(i + max_batch, batch)) for i in range(0, batch, max_batch)]
