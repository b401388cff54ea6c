"""tensorrt backend: a serialized TensorRT engine (``export/build_engine.py``) computes the
hidden states on CUDA; the Triton kernel pools, projects and normalises them.

The model directory must hold ``model.plan`` and ``engine.json`` next to an ONNX model
exported with ``--pooling external``. Before deserializing, ``engine.json`` is checked
against the model (version, hidden size), the installed TensorRT and this GPU's compute
capability; any mismatch raises EngineMismatchError naming the rebuild command. Batches
with more rows than the engine's profile are split; a padded length beyond it raises; fewer
rows or a shorter length than its minimum (``--min-shape``) are padded up to it.

UNVERIFIED: written against the TensorRT 10 Python API documentation; no machine of this
project had TensorRT when it was written. On CPU, tests/gpu runs it against a stand-in
engine (bindings, row splitting, pooling, every engine.json check); a real engine only in
tests/gpu with CUDA + tensorrt and in benchmarks/gpu_suite.py.

Use: python export/export_onnx.py --model M --out DIR --pooling external --no-optimize, then
python export/build_engine.py --onnx DIR/model.onnx --out DIR --fp16, then
Encoder.from_pretrained(DIR, backend="tensorrt", device="cuda", precision="fp16").
"""
from __future__ import annotations

import logging
import threading

import numpy as np

from ..engine_meta import INPUTS, OUTPUT, EngineMeta, check_meta, check_shape, file_sha256, rebuild_hint, row_chunks
from ..errors import BackendUnavailableError, EngineMismatchError, ValidationError
from .base import Backend
from .torch_cuda import fill_padded

log = logging.getLogger("postemb_rt")
INSTALL_HINT = "pip install 'postemb_rt[gpu,tensorrt]' (TensorRT 10.x, on a machine with an NVIDIA GPU)"


def _torch_dtype(torch, trt, dtype):
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32}
    for name, tdt in (("INT64", torch.int64), ("BF16", torch.bfloat16)):
        if hasattr(trt.DataType, name):  # INT64, BF16: TensorRT >= 9/10
            table[getattr(trt.DataType, name)] = tdt
    if dtype not in table:
        raise EngineMismatchError(f"engine tensor dtype {dtype} is not supported by the tensorrt backend.")
    return table[dtype]


def _device(torch, device: str):
    """The torch device tensors live on (one seam: the CPU tests put them in host memory)."""
    return torch.device(device)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, model, device="cuda", precision="fp32"):
        if not device.startswith("cuda"):
            raise BackendUnavailableError(
                f"the tensorrt backend runs on CUDA only. Given: device={device!r}. Fix: device='cuda'.")
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailableError(f"backend 'tensorrt' needs the package `tensorrt`. Fix: {INSTALL_HINT}") from None
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailableError(
                f"`device` {device!r} was asked for but torch sees no CUDA device. Fix: run on a GPU machine.")
        super().__init__(model, device, precision)
        directory = model.path
        self.meta = meta = EngineMeta.read(directory)
        if precision != meta.precision:
            raise ValidationError(
                f"`precision` must match the engine's ({meta.precision!r}, `{directory}/engine.json`). "
                f"Given: {precision!r}. Fix: precision={meta.precision!r}, or {rebuild_hint(directory, precision)}")
        self._torch_device = _device(torch, device)
        cap = torch.cuda.get_device_capability(self._torch_device)
        onnx = model.onnx_path if model.onnx_path is not None and model.onnx_path.is_file() else None
        check_meta(meta, directory, model_version=model.config.model_version, hidden_size=model.config.hidden_size,
                   tensorrt_version=trt.__version__, compute_capability=f"{cap[0]}.{cap[1]}",
                   onnx_sha256=file_sha256(onnx) if onnx is not None else None)
        engine_path = directory / meta.engine_file
        if not engine_path.is_file():
            raise EngineMismatchError(f"`{engine_path}` is missing. Fix: {rebuild_hint(directory, meta.precision)}")
        if meta.engine_sha256 and file_sha256(engine_path) != meta.engine_sha256:
            raise EngineMismatchError(f"`{engine_path}` is not the engine `engine.json` describes (sha256 differs). "
                                      f"Fix: {rebuild_hint(directory, meta.precision)}")
        self._max_rows, self._max_seq = meta.profile().max
        self._min_rows, self._min_seq = meta.profile().min
        if self._max_seq < model.config.max_length:
            log.warning("engine %s serves seq <= %d, below the model's max_length %d: pass max_length=%d to "
                        "Encoder.from_pretrained or longer posts fail", engine_path, self._max_seq,
                        model.config.max_length, self._max_seq)

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self._torch_device):
            self._engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
            if self._engine is None:
                raise EngineMismatchError(f"TensorRT {trt.__version__} could not deserialize `{engine_path}`. "
                                          f"Fix: {rebuild_hint(directory, meta.precision)}")
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            if sorted(names) != sorted([*INPUTS, OUTPUT]):
                raise EngineMismatchError(f"`{engine_path}` has tensors {names}; expected {[*INPUTS, OUTPUT]}. "
                                          f"Fix: {rebuild_hint(directory, meta.precision)}")
            self._dtypes = {n: _torch_dtype(torch, trt, self._engine.get_tensor_dtype(n)) for n in names}
            self._context = self._engine.create_execution_context()
            self._stream = torch.cuda.Stream(self._torch_device)
        self._lock = threading.Lock()  # one execution context: one batch at a time
        self._pool, self.pooling_kernel = self._pooler(model, torch)

    def _pooler(self, model, torch):
        from ..ops.masked_mean_pool_l2 import CudaPooler

        weight = bias = None
        if model.config.projection_dim:
            from ..durable import read_safetensors

            state = read_safetensors(model.projection_path, "projection")
            # (D, H) -> (H, D) C-contiguous once: the kernel reads W row by row.
            weight = state["weight"].float().t().contiguous().to(self._torch_device)
            bias = state["bias"].float().to(self._torch_device) if "bias" in state else None
        pool = CudaPooler(weight, bias)
        return pool, pool.name

    @property
    def max_batch_tokens(self) -> int:
        return max(min(4096, self._max_rows * self._max_seq), self._max_seq)

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        import torch

        rows, seq = input_ids.shape
        check_shape(self.meta, self.model.path, max(seq, self._min_seq))  # shorter ones are padded
        outs = []
        with self._lock, torch.cuda.device(self._torch_device), torch.cuda.stream(self._stream):
            for a, b in row_chunks(rows, self._max_rows):
                outs.append(self._run(torch, input_ids[a:b], attention_mask[a:b], normalize))
            result = torch.cat(outs) if len(outs) > 1 else outs[0]
            host = result.to("cpu", non_blocking=False)  # synchronises the stream
        return host.numpy()

    def _run(self, torch, ids_np, mask_np, normalize):
        """One chunk (b <= max rows, s <= max seq) through the engine on self._stream, then pooled.
        Below the profile's minimum it is padded up to it (padding never changes a real row)."""
        rows, seq = ids_np.shape
        if rows < self._min_rows or seq < self._min_seq:
            shape = (max(rows, self._min_rows), max(seq, self._min_seq))
            ids_pad, mask_pad = np.empty(shape, dtype=np.int64), np.empty(shape, dtype=np.int64)
            fill_padded(ids_pad, mask_pad, ids_np, mask_np)
            ids_np, mask_np = ids_pad, mask_pad
        dev = self._torch_device
        ids = torch.from_numpy(ids_np).to(dev, non_blocking=True).to(self._dtypes["input_ids"])
        mask = torch.from_numpy(mask_np).to(dev, non_blocking=True).to(self._dtypes["attention_mask"])
        b, s = ids.shape
        hidden = torch.empty((b, s, self.model.config.hidden_size), dtype=self._dtypes[OUTPUT], device=dev)
        ctx = self._context
        for name, t in (("input_ids", ids), ("attention_mask", mask), (OUTPUT, hidden)):
            if name != OUTPUT and not ctx.set_input_shape(name, (b, s)):
                raise EngineMismatchError(f"TensorRT refused input shape {(b, s)} for {name!r}; the engine's profile is "
                                          f"{self.meta.inputs[name]}. Fix: {rebuild_hint(self.model.path)}")
            if not ctx.set_tensor_address(name, t.data_ptr()):
                raise RuntimeError(f"TensorRT set_tensor_address failed for {name!r}.")
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for a ({b}, {s}) batch (see the TensorRT log).")
        # The pooler runs on the same stream after the engine: reads B*S*H*itemsize bytes once.
        return self._pool(hidden, mask, normalize=normalize)[:rows]

    def describe(self) -> dict:
        p = self.meta.profile()
        return {**super().describe(), "engine": str(self.model.path / self.meta.engine_file),
                "tensorrt_version": self.meta.tensorrt_version, "engine_device": self.meta.device_name,
                "profile": {"min": list(p.min), "opt": list(p.opt), "max": list(p.max)}}

    def close(self) -> None:
        self._context = self._engine = self._runtime = None
