"""HTTP embedding server (``postemb serve``): FastAPI on uvicorn, every request of a model on
that model's shared dynamic batcher.

Modules (text-embeddings-inference's router/backend split): ``schemas`` (request and
response models: the OpenAPI schema and the validation are one pydantic object),
``routes`` (the FastAPI app), ``runtime`` (owns the encoder and the batcher; no HTTP
routing), ``registry`` (the served models: one runtime each, the request's ``model`` looked up),
``metrics`` (Prometheus), ``auth`` (API key and admission), ``errors`` (the
error answer), ``encodings`` (HTTP names of the quantized outputs), ``config`` (``ServeConfig``), ``tei``
(text-embeddings-inference's routes and errors), ``connections`` (connection cap, header and
body deadlines, accept batches: what ``postemb serve`` runs uvicorn with).

Routes:
    POST /v1/embeddings  OpenAI-compatible: ``input`` (str | list[str]), ``model`` (with several
                         models: a served name or an alias (``registry``), absent = the default
                         model, unknown = 404 ``model_not_found``; with one: any string;
                         the answer's ``model`` names the model that answered), ``encoding_format``
                         (float | base64), ``dimensions`` (the model's dim or a declared prefix), ``user``
                         (ignored). Unknown fields are ignored, as OpenAI clients send extras.
                         The answer adds ``truncated`` (indices of inputs cut to max_length) and
                         ``vector_version`` (``Runtime.vector_version``: ``@<dim>`` for a prefix).
    GET  /v1/models      every served model once, ``id`` = its served name, ``aliases`` the others
                         (OpenAI-compatible listing); /v1/models/{id} takes either.
    POST /embed, POST /  text-embeddings-inference's (see ``tei``): a bare array of vectors; ``inputs`` may
                         be token ids, as TEI's (``tokens``); TEI has no ``model`` field, so these (and
                         /tokenize, /decode) serve the default model.
    POST /tokenize, /decode  text-embeddings-inference's.
    POST /embed_full     native: ``inputs``, ``truncate`` (true), ``normalize`` (true),
                         ``encoding`` (float32 | int8 | uint8 | binary | ubinary), ``long_posts`` (truncate |
                         chunk; default ``--long-posts``; the answer counts ``chunked`` posts
                         and their ``windows``), ``prompt_name``, ``truncation_direction``,
                         ``model`` and ``dimensions`` (as /v1/embeddings').
                         Unknown fields are a 422. (It was ``/embed`` before /embed became TEI's.)
    GET  /health         live (200 as soon as the process serves HTTP).
    GET  /ready          200 once every model is loaded and warmed up through its batcher (the
                         body lists them, ``models``), 503
                         while loading or after a backend failure (re-probed on each call);
                         the body gives a reason code only (details: the log, /info).
    GET  /info           model version, vector version, dim, backend, precision, limits, batcher
                         options, and text-embeddings-inference's fields, of the default model;
                         ``models``: every served model (name, model, model_version, dim, ready).
    GET  /metrics        Prometheus text: requests by route and status, request latency,
                         batcher queue depth (posts, tokens), batch size / padding ratio /
                         queue time / inference time histograms, batcher counters; with several
                         models, ``postemb_ready`` and ``postemb_batcher_*`` carry a ``model``
                         label (the served name).

Every embedding answer has the headers ``X-Truncated-Inputs`` and ``X-Vector-Version``. A request of
more tokens than max_queued_tokens is fed to the batcher in pieces (``Runtime._compute``): a full queue
refuses its first piece (429) only; a later piece waits for room within the request's deadline.

Errors are OpenAI-shaped JSON, ``{"error": {"message", "type", "param", "code", ...}}``
(TEI's routes: TEI's shape); limit errors add ``limit`` and ``given``. Client mistakes are
413 (a size limit) or 422 (malformed JSON, wrong type, empty list, naming the field and
index), 401 (API key), 408 (headers or body too slow), 429 + ``Retry-After`` (batcher queue
full, counted in tokens, or too slow to meet request_timeout at the measured rate;
``max_concurrent_requests`` requests computing; the bound on body bytes held), 503 (model not
ready, backend failure for the requests in that batch only, queue deadline passed, shutting
down; a code and a generic message, the detail in the log). A client that disconnects before
its answer is counted and logged as 499 (nginx's "client closed request"), never as a server
error. Every status is in the OpenAPI spec.

int8 / uint8 / binary: ``Encoder.encode(precision=...)``'s quantization, see
``postemb_rt.serving.encodings``.

``dimensions``: the model's dim, or a prefix it was trained to embed in (``matryoshka_dims`` in its
postemb.json: 32, 16 and 8 for ``default`` since v4); the answer is that prefix re-normalised, as
``Encoder.encode(truncate_dim=...)``. Any other value is a 422 naming the allowed ones. A request naming
none gets the model's default, ``Runtime.default_dim``: the ``truncate_dim`` its config declares (what
``Encoder.encode`` and sentence-transformers return by default), else its dim; the answer's vector version
says which (``@<dim>``), and /info's ``default_dimensions`` too.
"""
