"""``ServeConfig``: what ``postemb serve`` runs."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ValidationError
from ..model_dir import split_named


@dataclass
class ServeConfig:
    """What ``postemb serve`` runs; every limit is reported by ``GET /info``."""

    # "default", "base", a model directory or an ST folder; or a list of them, each "NAME=MODEL" or "MODEL",
    # served under NAME, else the model's model_version; the first is the default model (README "Several models")
    model: str | list[str] = "default"
    backend: str = "auto"
    device: str = "auto"  # "auto", "cpu" or "cuda[:N]" (Encoder.from_pretrained)
    max_batch_tokens: int | None = None  # padded tokens per model call (rows x longest row); None: the backend's
    precision: str = "fp32"  # CPU: bf16 / int8 gated by measured fidelity (README "Fast precisions")
    api_key: str | None = None
    max_inputs: int = 256  # posts per request
    max_input_chars: int = 16_384  # characters per post (the model reads max_length tokens of it)
    max_body_bytes: int = 4 * 1024 * 1024
    # embedding requests being computed at once (after their body is read: a slow client holds
    # no slot); past it, 429. Bodies being read hold at most max_concurrent_requests *
    # max_body_bytes bytes in all (128 * 4 MiB = 512 MiB), past it 429 too; probes and
    # /metrics are never refused.
    max_concurrent_requests: int = 128
    max_connections: int = 2048  # open connections; one more closes the oldest one still sending its request
    header_timeout_s: float = 10.0  # a request's headers must arrive within this (408, closed)
    body_timeout_s: float = 30.0  # a request's body must arrive within this once its headers did (408, closed)
    # an idle kept-alive connection is closed after this: longer than the 60 s for which proxies and load balancers
    # (nginx's upstream keepalive, AWS ALB) keep theirs open, so the server never closes one as they send on it
    keep_alive_timeout_s: float = 75.0
    max_queued_tokens: int = 65_536  # batcher backpressure: past it, 429
    max_batch_size: int = 64
    max_wait_us: int = 500
    batch_overhead_tokens: int = 64  # a model call's fixed cost in padded tokens (batch grouping)
    request_timeout_s: float = 30.0  # a request still queued after this is a 503
    drain_timeout_s: float = 30.0  # SIGTERM: in-flight requests get this long to finish
    long_posts: str = "truncate"  # /embed_full's and /embed's default: "truncate" or "chunk" (postemb_rt.long_posts)
    # browser origins allowed to call the API (CORS; "*": any); None: no CORS headers, browsers refuse
    cors_origins: list[str] | None = None

    def __post_init__(self):
        if self.api_key is not None:
            if not isinstance(self.api_key, str) or not self.api_key.strip():
                raise ValidationError(f"`api_key` must be a non-empty string, or None to serve without "
                                      f"authentication. Given: {self.api_key!r}. Fix: set a key, or pass "
                                      "api_key=None on purpose.")
            # a key read from a file or a heredoc often ends in a newline; the token a client
            # sends is compared stripped too, so a stripped key is the only one that can match
            self.api_key = self.api_key.strip()
        self.model_specs()  # refuses an empty list, an empty NAME or MODEL, and a name given twice

    def model_specs(self) -> list[tuple[str | None, str]]:
        """``model`` as [(NAME or None, MODEL)], the default model first. An entry is ``NAME=MODEL`` when
        it holds a ``=`` with no ``/`` before it (``./runs/lr=2e-5`` is a directory; ``lr=2e-5`` is NAME
        lr: write ``./lr=2e-5`` for that directory)."""
        entries = [self.model] if isinstance(self.model, str) else list(self.model)
        if not entries:
            raise ValidationError("`model` must name at least one model. Given: []. Fix: pass 'default', 'base', "
                                  "a model directory, or several (each NAME=MODEL or MODEL).")
        specs, seen = [], {}
        for entry in entries:
            if not isinstance(entry, str):
                raise ValidationError(f"`model` entries must be strings (NAME=MODEL or MODEL). Given: {entry!r}.")
            name, model = split_named(entry)
            if name == "" or not model:
                raise ValidationError(f"`--model` {entry!r} has an empty {'NAME' if name == '' else 'MODEL'}. Fix: "
                                      "pass NAME=MODEL (e.g. v4=./runs/v4) or just MODEL.")
            # a NAME given twice; or the same MODEL twice without one (one model_version, served twice)
            key = ("name", name) if name is not None else ("model", model)
            if key in seen:
                what = (f"serves two models as {name!r}: {seen[key]!r} and {entry!r}" if name is not None else
                        f"names {model!r} twice without a NAME: both would be served as its model_version")
                raise ValidationError(f"`--model` {what}. Served names must differ. Fix: give each its own name, "
                                      f"--model NAME=MODEL (e.g. --model {name or model}-2={model}).")
            seen[key] = entry
            specs.append((name, model))
        return specs

    def public(self) -> dict:
        d = asdict(self)
        d["api_key"] = self.api_key is not None  # whether one is required, never the key
        return d
