"""The torch backend's CUDA path: fp32/fp16/bf16 weights, scaled-dot-product attention,
the Triton pooling kernel, and CUDA graphs captured per (rows, seq) bucket at load.

Why graphs: a 6-layer MiniLM batch of short posts is ~100 small kernels; at batch 1-32
the GPU finishes each faster than Python launches the next, so launch overhead, not
FLOPs, sets the latency. A replay submits the whole forward pass at once.

How: ``plan_buckets`` picks (rows, seq) shapes: seq in {16, 32, 64, ...} up to max_length,
rows in powers of two with rows * seq <= max_batch_tokens. Each bucket owns static device
buffers (ids, mask: rows*seq*8 bytes each; output rows*D*4 bytes), pinned host staging
buffers and one graph; all graphs share one memory pool and replay on one stream under a
lock, never concurrently, so their intermediates may share memory. A batch is padded to
the smallest bucket that holds it (padding rows get one token so no row is all-masked;
padding never changes a real row: masked keys get zero attention weight and the pooler
skips masked tokens). More rows than any bucket of that length: split into chunks. A
length beyond every bucket runs eagerly (counted in describe()).

``POSTEMB_CUDA_GRAPHS=0`` runs everything eagerly (the benchmark's baseline).

UNVERIFIED on a GPU when written (no device was lent). On CPU, tests/gpu checks the bucket
logic and the whole bucket path with capture replaced by re-running the captured function;
real capture/replay, pinned copies and fp16/bf16 run only in tests/gpu on CUDA and in
benchmarks/gpu_suite.py.
"""
from __future__ import annotations

import logging
import os
import threading

import numpy as np

log = logging.getLogger("postemb_rt")
CUDA_PRECISIONS = ("fp32", "fp16", "bf16")
SEQ_BUCKETS = (16, 32, 64, 128, 256, 512)
MAX_BUCKET_ROWS = 256


def seq_buckets(max_length: int) -> list[int]:
    """Padded lengths graphs are captured for: the standard buckets below max_length, then max_length."""
    if max_length < 1:
        raise ValueError(f"`max_length` must be >= 1. Given: {max_length}.")
    return [s for s in SEQ_BUCKETS if s < max_length] + [max_length]


def plan_buckets(max_length: int, max_batch_tokens: int, max_rows: int = MAX_BUCKET_ROWS) -> list[tuple[int, int]]:
    """(rows, seq) shapes to capture: for every seq bucket, rows = 1, 2, 4, ... while
    rows * seq <= max_batch_tokens and rows <= max_rows (always at least rows = 1)."""
    if max_batch_tokens < 1 or max_rows < 1:
        raise ValueError(f"`max_batch_tokens` and `max_rows` must be >= 1. Given: {max_batch_tokens}, {max_rows}.")
    out = []
    for s in seq_buckets(max_length):
        rows = 1
        while True:
            out.append((rows, s))
            rows *= 2
            if rows > max_rows or rows * s > max_batch_tokens:
                break
    return out


def pick_bucket(buckets, rows: int, seq: int) -> tuple[int, int] | None:
    """The bucket with the fewest padded slots (then the shortest seq) that holds a
    (rows, seq) batch; None when none does."""
    fits = [(b * s, s, (b, s)) for b, s in buckets if b >= rows and s >= seq]
    return min(fits)[2] if fits else None


def split_rows(buckets, rows: int, seq: int) -> list[tuple[int, int]]:
    """Row slices [(start, stop)] of a (rows, seq) batch, each small enough for a bucket of
    length >= seq; [] when seq is longer than every bucket (the batch then runs eagerly)."""
    cap = max((b for b, s in buckets if s >= seq), default=0)
    return [(i, min(i + cap, rows)) for i in range(0, rows, cap)] if cap else []


def fill_padded(dst_ids: np.ndarray, dst_mask: np.ndarray, ids: np.ndarray, mask: np.ndarray) -> None:
    """Copy a (B, S) batch into (rows, seq) buffers, padding with id 0 / mask 0; padding rows
    get mask[:, 0] = 1 so attention never sees an all-masked row (their output is dropped)."""
    b, s = ids.shape
    dst_ids[:b, :s] = ids
    dst_ids[:b, s:] = 0
    dst_ids[b:] = 0
    dst_mask[:b, :s] = mask
    dst_mask[:b, s:] = 0
    dst_mask[b:] = 0
    dst_mask[b:, 0] = 1


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of x (B, D) float32 scaled to unit L2 norm (zero rows stay zero), as torch's F.normalize."""
    norm = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    return x / np.maximum(norm, eps)[:, None]


def new_stream(device):
    """The runner's own CUDA stream: copies and replays are ordered on it, off the default stream."""
    import torch

    return torch.cuda.Stream(device)


def capture_graph(fn, pool, stream, device):
    """Run ``fn`` (reads and writes only static tensors) twice on ``stream`` to warm up (lazy
    init, Triton compiles, cuBLAS workspaces), then capture it into a CUDA graph sharing
    ``pool``. Returns (replay, out): replay() reruns the captured work on the current stream
    and leaves the result in ``out``, the tensor fn returned during capture."""
    import torch

    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, stream=stream):
        out = fn()
    return graph.replay, out


class TorchCudaRunner:
    """The model on one CUDA device: ``__call__(ids, mask, normalize)`` -> float32 (B, D) numpy."""

    def __init__(self, model, device: str, precision: str = "fp32", max_batch_tokens: int = 4096,
                 use_graphs: bool | None = None):
        import torch

        from ..modeling import PostEmbModel
        from ..ops.masked_mean_pool_l2 import CudaPooler

        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_tokens = max_batch_tokens
        net = PostEmbModel.from_model_dir(model, attn_implementation="sdpa")
        self._encoder = net.encoder.to(self.device, dtype=dtype).eval()
        weight = bias = None
        fused = net.fused_head()
        if fused and fused[0] is not None:  # the projection stays fp32: the kernel accumulates in fp32
            weight = fused[0].detach().t().contiguous().to(self.device)
            bias = None if fused[1] is None else fused[1].detach().to(self.device)
        # Mean pooling in the Triton kernel (with the projection when it is the whole head); other
        # pooling modes and heads in torch, fp32, on the kernel's or the encoder's output.
        self._fused = fused is not False
        self._pool = CudaPooler(weight, bias) if net.pooling == "mean" else None
        net.dense.to(self.device)
        if net.projection is not None:
            net.projection.to(self.device)
        self.pooling_kernel = (self._pool.name if self._fused else
                               f"{self._pool.name}, then the head in torch" if self._pool is not None else
                               f"torch ({net.pooling} pooling and head)")
        self._net = net
        self.dim = model.config.dim
        self._stream = new_stream(self.device)
        self._lock = threading.Lock()
        self._graphs: dict[tuple[int, int], tuple] = {}
        self.eager_batches = 0
        if use_graphs is None:
            use_graphs = os.environ.get("POSTEMB_CUDA_GRAPHS", "1") != "0"
        self.graphs = "off (POSTEMB_CUDA_GRAPHS=0)" if not use_graphs else "not captured"
        if use_graphs:
            self.capture(plan_buckets(model.config.max_length, max_batch_tokens))

    def _forward(self, ids, mask):
        """(B, S) int64 device tensors -> (B, D) float32 pooled, not normalised."""
        import torch

        extra = {"token_type_ids": torch.zeros_like(ids)} if self._net._token_types else {}
        hidden = self._encoder(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
        if self._fused:
            return self._pool(hidden, mask, normalize=False)
        if self._pool is not None:
            return self._net.head(self._pool(hidden, mask, normalize=False))
        return self._net.pool_and_head(hidden.float(), mask)

    def capture(self, buckets) -> None:
        """Capture one graph per bucket, largest first so smaller captures reuse the shared pool."""
        import torch

        pool = torch.cuda.graph_pool_handle()
        pin = self.device.type == "cuda"
        try:
            with torch.inference_mode(), torch.cuda.device(self.device):
                for b, s in sorted(buckets, key=lambda bs: -bs[0] * bs[1]):
                    ids = torch.zeros((b, s), dtype=torch.int64, device=self.device)
                    mask = torch.zeros((b, s), dtype=torch.int64, device=self.device)
                    mask[:, 0] = 1
                    replay, out = capture_graph(lambda ids=ids, mask=mask: self._forward(ids, mask), pool,
                                                self._stream, self.device)
                    staging = [torch.empty(shape, dtype=dt, pin_memory=pin)
                               for shape, dt in (((b, s), torch.int64), ((b, s), torch.int64),
                                                 ((b, self.dim), torch.float32))]
                    self._graphs[b, s] = (replay, ids, mask, out, *staging)
            torch.cuda.synchronize(self.device)
        except Exception as exc:  # never silent: logged and reported by describe()
            self._graphs.clear()
            self.graphs = f"off (capture failed: {type(exc).__name__}: {exc})"
            log.warning("CUDA graph capture failed, running eagerly: %s", exc)
            return
        self.graphs = f"{len(self._graphs)} buckets"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool = True) -> np.ndarray:
        import torch

        rows, seq = input_ids.shape
        chunks = split_rows(self._graphs, rows, seq) if self._graphs else []
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device), torch.cuda.stream(self._stream):
            if not chunks:
                self.eager_batches += 1
                ids = torch.from_numpy(input_ids).to(self.device, non_blocking=True)
                mask = torch.from_numpy(attention_mask).to(self.device, non_blocking=True)
                out = self._forward(ids, mask).cpu().numpy()
            else:
                parts = [self._replay(input_ids[a:b], attention_mask[a:b]) for a, b in chunks]
                out = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return l2_normalize(out) if normalize else out

    def _replay(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One (B, S) batch that a bucket holds: stage, copy, replay, copy back. (B, D) float32."""
        rows, seq = input_ids.shape
        replay, ids, mask, dev_out, pin_ids, pin_mask, pin_out = self._graphs[pick_bucket(self._graphs, rows, seq)]
        fill_padded(pin_ids.numpy(), pin_mask.numpy(), input_ids, attention_mask)
        ids.copy_(pin_ids, non_blocking=True)  # rows*seq*8 bytes each, from pinned memory
        mask.copy_(pin_mask, non_blocking=True)
        replay()
        pin_out.copy_(dev_out, non_blocking=True)
        self._stream.synchronize()  # the staging buffers are reused by the next replay
        return pin_out.numpy()[:rows].copy()

    def describe(self) -> dict:
        return {"cuda_graphs": self.graphs, "eager_batches": self.eager_batches, "attention": "sdpa"}

    def close(self) -> None:
        self._graphs.clear()
        self._encoder = self._net = None
