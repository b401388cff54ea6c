"""``ServeConfig``: what ``postemb serve`` runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ServeConfig:
    """What ``postemb serve`` runs; every limit is reported by ``GET /info``."""

    model: str = "default"
    backend: str = "auto"
    precision: str = "fp32"  # CPU: bf16 / int8 gated by measured fidelity (README "Fast precisions")
    api_key: str | None = None
    max_inputs: int = 256  # posts per request
    max_input_chars: int = 16_384  # characters per post (the model reads max_length tokens of it)
    max_body_bytes: int = 4 * 1024 * 1024
    # embedding requests (/v1/embeddings, /embed) in progress at once, body reading included;
    # past it a request gets 429 before its body is read. Bounds request memory at about
    # max_concurrent_requests * max_body_bytes (128 * 4 MiB = 512 MiB) whatever the number of
    # open connections; probes and /metrics are never refused.
    max_concurrent_requests: int = 128
    max_queued_tokens: int = 65_536  # batcher backpressure: past it, 429
    max_batch_size: int = 64
    max_wait_us: int = 500
    batch_overhead_tokens: int = 64  # a model call's fixed cost in padded tokens (batch grouping)
    request_timeout_s: float = 30.0  # a request still queued after this is a 503
    drain_timeout_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    long_posts: str = "truncate"  # /embed's default: "truncate" or "chunk" (postemb_rt.long_posts)

    def public(self) -> dict:
        d = asdict(self)
        d["api_key"] = self.api_key is not None  # whether one is required, never the key
        return d
