"""``postemb serve``: the HTTP embedding server (see ``postemb_rt.serving`` for the API).

    postemb serve --model default --host 127.0.0.1 --port 8080
    postemb serve --model default --model base --model v4=./runs/v4   # several models, one server
    POSTEMB_API_KEY=secret postemb serve --port 8080       # 401 without `Authorization: Bearer secret`

The port opens at once (``GET /health`` answers); the model loads meanwhile and ``GET /ready``
turns 200 when it is warmed up. SIGTERM: stop accepting, finish the requests in flight (at
most --drain-timeout seconds), drain the batcher, exit 0 (Ctrl-C does the same, exit 130; a second
Ctrl-C stops at once, leaving the requests in flight unanswered). A model that fails to load stops the
server with exit code 1.

Several models: repeat --model (each NAME=MODEL or MODEL; $POSTEMB_MODEL takes them
comma-separated). Each model has its own encoder and batcher and is served under its NAME, else
its model_version; the first is the default. /v1/embeddings and /embed_full pick one by the
request's `model` field (a served name, or an alias naming one model only: its model_version, or the
MODEL typed for a model without a NAME, so `--model default --model base` answers to "default" and
"base"; absent: the default; unknown: 404 model_not_found); text-embeddings-inference's routes
(/embed, /, /similarity, /tokenize, /decode) have no such field and serve the default model. GET
/v1/models lists them; GET /ready turns 200 when every one is loaded. Two models served under one
name are refused at start. With one model, the request's `model` is ignored, as before (GET
/v1/models/{id} takes its served name and aliases only).

Needs the ``[serve]`` extra (fastapi, uvicorn, prometheus-client, orjson, swagger-ui-bundle for
/docs, sentence-transformers for the quantized encodings).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile

from .. import backends
from ..errors import ValidationError

LISTEN_BACKLOG = 2048  # connections the kernel completes before we accept them (capped by net.core.somaxconn)


def config_from_args(args):
    from ..serving.config import ServeConfig

    if args.api_key is not None and not args.api_key.strip():
        raise ValidationError("`--api-key` is empty, which would serve without "
                              "authentication. Given: ''. Fix: set a non-empty key, or unset POSTEMB_API_KEY "
                              "(and drop --api-key) to serve without one on purpose.")
    if args.max_batch_tokens is not None and args.max_batch_tokens < 1:
        raise ValidationError(f"`--max-batch-tokens` must be >= 1. Given: {args.max_batch_tokens}.")
    cfg = ServeConfig(model=model_specs(args), backend=args.backend, device=args.device, precision=args.precision,
                      max_batch_tokens=args.max_batch_tokens, api_key=args.api_key,
                      max_inputs=args.max_inputs, max_input_chars=args.max_input_chars,
                      max_body_bytes=args.max_body_bytes, max_concurrent_requests=args.max_concurrent_requests,
                      max_connections=args.max_connections, header_timeout_s=args.header_timeout,
                      body_timeout_s=args.body_timeout, keep_alive_timeout_s=args.keep_alive_timeout,
                      max_queued_tokens=args.max_queued_tokens,
                      max_batch_size=args.max_batch_size, max_wait_us=args.max_wait_us,
                      batch_overhead_tokens=args.batch_overhead_tokens,
                      request_timeout_s=args.request_timeout, drain_timeout_s=args.drain_timeout,
                      long_posts=args.long_posts, cors_origins=args.cors_origin)
    for name in ("max_inputs", "max_input_chars", "max_body_bytes", "max_concurrent_requests", "max_queued_tokens",
                 "max_batch_size", "max_connections"):
        if getattr(cfg, name) < 1:
            raise ValidationError(f"`--{name.replace('_', '-')}` must be >= 1. Given: {getattr(cfg, name)}.")
    for name in ("max_wait_us", "batch_overhead_tokens"):
        if getattr(cfg, name) < 0:
            raise ValidationError(f"`--{name.replace('_', '-')}` must be >= 0. Given: {getattr(cfg, name)}.")
    for name, flag in (("header_timeout_s", "header-timeout"), ("body_timeout_s", "body-timeout"),
                       ("request_timeout_s", "request-timeout"), ("keep_alive_timeout_s", "keep-alive-timeout")):
        if not getattr(cfg, name) > 0:
            raise ValidationError(f"`--{flag}` must be > 0 seconds. Given: {getattr(cfg, name)}.")
    if not cfg.drain_timeout_s >= 0:
        raise ValidationError(f"`--drain-timeout` must be >= 0 seconds. Given: {cfg.drain_timeout_s}.")
    if args.workers < 1:
        raise ValidationError(f"`--workers` must be >= 1. Given: {args.workers}.")
    if not 0 <= args.port <= 65535:
        raise ValidationError(f"`--port` must be in 0..65535 (0: a free one, printed). Given: {args.port}.")
    return cfg


class ModelsAction(argparse.Action):
    """``--model``, repeatable: ``args.model`` is the first given (the default model), ``args.models``
    every one given (None when none was: then ``args.model`` is the default or $POSTEMB_MODEL, a
    comma-separated list). ``env_list``: $POSTEMB_MODEL holds a list for this command (``postemb_rt.cli``)."""

    env_list = True

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.models = [*(getattr(namespace, "models", None) or []), values]
        namespace.model = namespace.models[0]


def model_specs(args) -> str | list[str]:
    """The served models from the command line (every --model) or the environment (comma-separated):
    one str for one model (``ServeConfig.model`` as before), else the list."""
    from ..cli import env_items

    specs = args.models or env_items(args.model)
    return specs[0] if len(specs) == 1 else specs


def default_threads(workers: int) -> int | None:
    """Model threads per server process when neither --threads nor $POSTEMB_NUM_THREADS says:
    None with one worker (the backends' default, as ``encode`` has: ``cpu.model_threads``), else
    the CPUs this process may use shared out among the workers (so with several workers
    $POSTEMB_NUM_THREADS is always set). The event loop gets no core of its own: on an idle
    2-core Zen 4, 2 model threads served 1.2-1.6x the posts/s of 1 at 64 clients, with a lower
    latency at 1 client, on OpenVINO bf16 and fp32 and onnxruntime fp32 (benchmarks/RESULTS.md
    "Server threads")."""
    if "POSTEMB_NUM_THREADS" in os.environ or workers <= 1:
        return None
    from ..cpu import usable_cpus

    return max(1, usable_cpus() // workers)


def run(args) -> int:
    try:
        import uvicorn

        from ..serving.routes import create_app
    except ImportError as exc:
        raise ValidationError(f"`postemb serve` needs the serve extra ({exc.name} is missing). "
                              "Fix: pip install 'postemb_rt[serve]'.") from None
    if args.threads is not None and args.threads < 0:
        raise ValidationError(f"`--threads` must be >= 0 (0: the default). Given: {args.threads}. Fix: e.g. 1 per "
                              "worker, or leave it out.")
    threads = args.threads or default_threads(args.workers)
    if threads:
        os.environ["POSTEMB_NUM_THREADS"] = str(threads)
    cfg = config_from_args(args)
    what = (f"model {cfg.model!r}, backend {cfg.backend!r}" if isinstance(cfg.model, str)
            else f"models {cfg.model}, backend {cfg.backend!r}")
    if args.workers > 1:
        # each worker process loads its own model and batcher. uvicorn binds the port itself in
        # the supervisor; binding it here first gives the same error as one worker for a port in
        # use, and the real port for --port 0, printed as with one worker.
        probe = listen(args.host, args.port)
        port = probe.getsockname()[1]
        probe.close()
        os.environ["POSTEMB_SERVE_CONFIG"] = json.dumps(cfg.__dict__)
        fd, fatal = tempfile.mkstemp(prefix="postemb-serve-fatal-")  # a worker's failed model load lands here
        os.close(fd)
        os.environ["POSTEMB_SERVE_FATAL_FILE"] = fatal
        # every worker's /metrics answers for all: prometheus-client's multiprocess files and our
        # workers' snapshots (serving/metrics.py) go here, a fresh directory per run
        metrics_dir = tempfile.mkdtemp(prefix="postemb-serve-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ["POSTEMB_SERVE_WORKERS"] = str(args.workers)  # /ready waits for them all
        signal.signal(signal.SIGTERM, lambda *_: None)  # see serve_app
        from ..logs import log_config
        from ..serving.connections import configure, uvicorn_options

        configure(cfg)  # each worker does it again
        print(f"postemb serve: listening on {url(args.host, port)} ({what}; {args.workers} workers, model threads "
              f"per worker: {os.environ['POSTEMB_NUM_THREADS']}; GET /ready turns 200 "
              "when every worker's model is loaded)", flush=True)
        try:
            uvicorn.run("postemb_rt.serving.routes:app_from_env", factory=True, host=args.host, port=port,
                        workers=args.workers, log_level=None, access_log=args.access_log,
                        log_config=log_config(args.verbose, args.log_format, args.access_log),
                        timeout_graceful_shutdown=cfg.drain_timeout_s,
                        backlog=LISTEN_BACKLOG, **uvicorn_options())
            with open(fatal, encoding="utf-8") as f:
                errors = f.read().split("\n")[0]
        finally:
            os.unlink(fatal)
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if errors:
            print(f"postemb serve: error: {errors}", file=sys.stderr)
            return 1
        return 0
    return serve_app(create_app(cfg), args.host, args.port, cfg.drain_timeout_s, verbose=args.verbose,
                     access_log=args.access_log, what=what, log_format=args.log_format)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (0: a free port), or the ValidationError naming them."""
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted sockets only then; without
    # it a keep-alive answer (headers and body in two writes) waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValidationError(f"cannot listen on {host}:{port}: {exc.strerror}. Fix: a free --port (0 picks one) "
                              "on an address of this machine (--host), or stop what holds that port.") from None
    sock.listen(LISTEN_BACKLOG)
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_app(app, host: str, port: int, drain_timeout_s: float, verbose: bool = False, access_log: bool = False,
              what: str = "", log_format: str = "text") -> int:
    """Serve a ``postemb_rt.serving.routes.create_app`` app on host:port (0: a free port) until SIGTERM
    or Ctrl-C; prints the address once listening; uvicorn logs through ``logs.log_config``'s handler.
    Returns the exit code: 0 after a drain (130 after Ctrl-C's, or when a second Ctrl-C cut it short), 1
    when a model failed to load."""
    import uvicorn

    from ..logs import dropped, log_config
    from ..serving.connections import configure, uvicorn_options

    cfg = app.state.models.cfg
    configure(cfg)
    sock = listen(host, port)
    host, port = sock.getsockname()[:2]
    logs = log_config(verbose, log_format, access_log)
    server = uvicorn.Server(uvicorn.Config(app, log_level=None, log_config=logs, access_log=access_log,
                                           timeout_graceful_shutdown=drain_timeout_s, lifespan="on",
                                           backlog=LISTEN_BACKLOG, **uvicorn_options()))
    models = app.state.models
    models.on_fatal = lambda: setattr(server, "should_exit", True)
    models.on_loaded = lambda: print(f"postemb serve: ready: {models.summary()}", flush=True)
    print(f"postemb serve: listening on {url(host, port)} ({what}; GET /ready turns 200 when the model is "
          "loaded)", flush=True)
    # a second Ctrl-C stops uvicorn at once (force_exit): the requests in flight and the lifespan's wait are
    # cancelled, which uvicorn and Starlette log as tracebacks; the message below says what happened instead
    def cut_short(r: logging.LogRecord) -> bool:
        cancelled = r.exc_info is not None and isinstance(r.exc_info[1], asyncio.CancelledError)
        return server.force_exit and (cancelled or "CancelledError" in r.getMessage())

    # uvicorn re-raises a captured SIGTERM / SIGINT after its shutdown, which would end the process with -15,
    # or raise KeyboardInterrupt into asyncio's runner (at random either that or a cancel; after a second
    # Ctrl-C, with the tasks still running cancelled and their tracebacks): handlers of our own take those
    # re-raises, so a drain exits 0 after SIGTERM and 130 after Ctrl-C, every time
    interrupted = []
    signal.signal(signal.SIGTERM, lambda *_: None)
    signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    with dropped("uvicorn.error", cut_short):
        server.run(sockets=[sock])
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C interrupts again from here
    if models.load_error:
        print(f"postemb serve: error: {models.load_error}", file=sys.stderr)
        return 1
    if server.force_exit:
        print("postemb serve: stopped at a second Ctrl-C: requests in flight were not answered (a batch "
              "being computed finishes first)", file=sys.stderr, flush=True)
        return 130
    print("postemb serve: stopped", flush=True)
    return 130 if interrupted else 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP embedding server (OpenAI-compatible /v1/embeddings, "
                       "text-embeddings-inference's /embed, native /embed_full, /metrics)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", action=ModelsAction, metavar="[NAME=]MODEL",
                   help="'default', 'base', a model directory or a sentence-transformers folder; repeat it to serve "
                        "several (the first is the default; served as NAME, else as the model's model_version; "
                        "comma-separated in the environment) (default: default)")
    p.set_defaults(models=None)
    p.add_argument("--backend", default="auto", choices=backends.CHOICES,
                   help="the runtime (default: auto: the fastest installed for this device and precision)")
    p.add_argument("--precision", default="auto", choices=backends.PRECISIONS,
                   help="auto (the first precision that clears the fidelity bar "
                   "on this CPU of: bf16 with native bf16, else int8, else fp32; /info says which and why, and the "
                   "vector version carries it), fp32 (exact), bf16 or int8 on CPU, fp16/bf16 on CUDA (default: auto)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto: CUDA when torch sees a GPU)")
    p.add_argument("--max-batch-tokens", type=int, default=None, help="padded tokens per model call, rows x longest "
                   "row (default: the backend's; at least the model's max_length)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port; 0 picks a free one, printed (default: 8080)")
    p.add_argument("--workers", type=int, default=1,
                   help="server processes, each with its own model and its share of the cores (default: 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads for the model, per worker (sets POSTEMB_NUM_THREADS; 0 or default: "
                        "$POSTEMB_NUM_THREADS, else one per physical core or the process's CPU limit, shared out among "
                        "the workers)")
    p.add_argument("--api-key", default=os.environ.get("POSTEMB_API_KEY"),
                   help="require `Authorization: Bearer KEY` (default: $POSTEMB_API_KEY; the environment keeps "
                        "it out of `ps`)")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="a browser origin allowed to call the API (CORS), e.g. https://app.example.com; repeatable; "
                        "'*' allows any (default: none: browsers on other origins are refused)")
    p.add_argument("--max-inputs", type=int, default=256,
                   help="posts per request; past it 413 (OpenAI takes 2,048: an answer's bytes and compute time grow "
                        "with it, see README's limits table) (default: 256)")
    p.add_argument("--max-input-chars", type=int, default=16_384, help="characters per post (default: 16384)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 1024 * 1024, help="request body bytes (default: 4 MiB)")
    p.add_argument("--max-concurrent-requests", type=int, default=128,
                   help="embedding requests computed at once, taken after the body is read (a slow client holds "
                        "none); past it 429. Bodies held in all stay under this times --max-body-bytes "
                        "(default: 128)")
    p.add_argument("--max-connections", type=int, default=2048,
                   help="open connections; one more closes the oldest connection still sending its request, and "
                        "when every one has a request in progress it gets 503 (default: 2048, at most the open-file "
                        "limit less 128; the soft limit is raised to the hard one at start)")
    p.add_argument("--header-timeout", type=float, default=10.0,
                   help="seconds a connection gets to send a request's headers, counted from its start, or on a "
                        "kept-alive connection from the next request's first byte; then 408 and closed (default: 10)")
    p.add_argument("--keep-alive-timeout", type=float, default=75.0,
                   help="seconds an idle kept-alive connection stays open after an answer; keep it above the idle "
                        "timeout of a proxy or load balancer in front (nginx's upstream keepalive and an AWS ALB: 60 "
                        "s), else a request it sends as the server closes gets a 502 (default: 75; uvicorn's is 5)")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request gets to send its body once its headers came (then 408 and closed), "
                        "and an answer its client stops reading gets to drain (then closed) (default: 30)")
    p.add_argument("--max-queued-tokens", type=int, default=65_536,
                   help="batcher queue bound in tokens; past it requests get 429; a request larger than it is fed "
                        "to the queue in pieces (default: 65536)")
    p.add_argument("--max-batch-size", type=int, default=64, help="posts per model call (default: 64)")
    p.add_argument("--max-wait-us", type=int, default=500,
                   help="how long a post waits for company before its batch runs (default: 500)")
    p.add_argument("--batch-overhead-tokens", type=int, default=64,
                   help="a model call's fixed cost in padded tokens: larger gives fewer, fuller batches (default: 64)")
    p.add_argument("--request-timeout", type=float, default=30.0,
                   help="seconds a request may wait in the queue: then 429 queue_timeout, or 503 when no batch "
                        "finished meanwhile (default: 30)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="SIGTERM: seconds in-flight requests get to finish (default: 30)")
    p.add_argument("--long-posts", choices=["truncate", "chunk"], default="truncate",
                   help="posts longer than max_length on /embed_full (the default of its long_posts field), /embed, "
                        "/, /invocations and /similarity: truncate, or chunk (embed the whole post as windows; see "
                        "README); /v1/embeddings always truncates (default: truncate)")
    p.add_argument("--access-log", action="store_true",
                   help="one log line per request (uvicorn.access, INFO) on stderr, JSON with --log-format json; "
                        "-v is not needed (costs throughput)")
    p.set_defaults(func=run)
