"""text-embeddings-inference's HTTP API on our runtime, so TEI clients (``huggingface_hub``'s
``InferenceClient.feature_extraction``, the TEI integrations of langchain and llama-index) work
unchanged:

    POST /embed, POST /   ``inputs`` (a string, one input's token ids, or a list of strings and token-id
                          lists, as TEI: ids are read as TEI reads them, see ``tokens``: no special
                          tokens added, cut to max_length with truncation, a prompt applied to their
                          text; ids past the vocabulary are a 422; TEI takes ids here only, not
                          on /similarity nor /tokenize), ``normalize`` (true),
                          ``truncate`` (null: the server's ``auto_truncate``, true here),
                          ``truncation_direction`` (right | left), ``prompt_name``, ``dimensions`` (the
                          model's dim or a declared matryoshka prefix; null: the model's default,
                          its ``truncate_dim`` if it declares one); answers a bare JSON array of
                          floats, one vector per input. Unknown fields are ignored, as TEI does
                          (``encoding_format`` too: base64 is /v1/embeddings'); our
                          native fields (``encoding``, ``long_posts``) are a 422 naming
                          ``/embed_full``, where the native answer moved. POST /invocations is the
                          same route (SageMaker's, as TEI serves it).
    POST /similarity      ``inputs: {source_sentence, sentences}``, ``parameters: {truncate,
                          truncation_direction, prompt_name}`` (``InferenceClient.sentence_similarity``
                          sent to ``URL/similarity``): the cosine of each sentence with the source, a
                          bare JSON array, of the vectors at the model's default dim. ``POST /`` stays
                          ``/embed``, TEI's default for an embedding model.
    POST /tokenize        ``inputs``, ``add_special_tokens`` (true), ``prompt_name``: per input, its
                          tokens ``{id, text, special, start, stop}`` (UTF-8 byte offsets, as TEI's),
                          every token of the text, not cut to max_length (as TEI's).
    POST /decode          ``ids`` (a list, or a list of lists), ``skip_special_tokens`` (true): texts.
    GET  /info            TEI's fields (``model_id``, ``max_input_length``, ...) beside ours.

TEI's requests name no model: with several models served (``--model`` repeated), these routes
serve the default one (the first ``--model``), and ``/info``'s TEI fields describe it.

    POST /embed_sparse, /embed_all, /rerank, /predict: TEI's 424 model-type answer (this server
                          pools dense vectors; it has no SPLADE head, token vectors, re-ranker or
                          classifier to serve).

Errors on these routes are TEI's: ``{"error": message, "error_type": type}``, Validation 413 (a
size limit, a post too long with truncate false, an empty string, an unknown prompt_name or
dimensions) or 422 (a malformed request), 415 (not JSON), Empty 400, Overloaded 429, Backend 424
(the model failed on the batch), Unhealthy 503. A missing or wrong
API key is our 401 (as on every route). Every answer of an embedding says in the
``X-Truncated-Inputs`` header how many inputs were cut to max_length, and carries TEI's metadata headers
(``compute_headers``).
"""
import time
from urllib.parse import quote

from .. import __version__
from ..encode_options import allowed_dims, truncate as truncate_rows
from .errors import ApiError, json_response
from .schemas import (DecodeRequest, ErrorResponse, SimilarityParameters, SimilarityRequest, TeiEmbedRequest,
                      TeiErrorResponse, TokenizeRequest, body_doc, given)
from .tokens import fit_chars

TRUNCATED_HEADER = "X-Truncated-Inputs"  # how many inputs of the request were cut to max_length
VERSION_HEADER = "X-Vector-Version"  # the vector version of the answer's vectors (Runtime.vector_version)
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != "%")  # visible ASCII: as it is
AUTO_TRUNCATE = True  # TEI's --auto-truncate: what `truncate: null` means here (as /v1/embeddings always does)
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "int8": "int8"}
_ERRORS = {
    400: "Empty: an empty input list",
    401: "missing or wrong API key (`Authorization: Bearer <key>`), our answer shape",
    408: "Validation: the request body did not arrive within body_timeout_s",
    413: "Validation: a size limit (body bytes, inputs, queued tokens), a post longer than max_input_length (or "
         "max_input_chars) with truncate false, an empty string or list of ids, an unknown prompt_name or dimensions",
    415: "Validation: the body is not declared JSON (Content-Type) or is compressed (Content-Encoding)",
    422: "Validation: malformed JSON, a wrong type, a missing field, a token id past the model's vocabulary",
    424: "Backend: the model failed on the batch holding this request",
    429: "Overloaded: see Retry-After",
    503: "Unhealthy: the model is loading or failed to load, a queue deadline, or shutting down",
}


VALIDATION_413 = frozenset({"max_length", "empty_string", "dimensions_unsupported", "unknown_prompt_name"})


def tei_error(err: ApiError):
    """Our ``ApiError`` as text-embeddings-inference answers the same mistake: TEI's Validation
    errors (a check of the request's values, after parsing) are 413, its own parse errors 422."""
    status, code = err.status, err.body.get("code")
    if status == 422 and code == "empty_input":
        status, kind = 400, "Empty"
    elif status == 422 and code in VALIDATION_413:
        status, kind = 413, "Validation"
    elif status in (408, 413, 415, 422):
        kind = "Validation"
    elif status == 429:
        kind = "Overloaded"
    elif status == 503 and code == "backend_error":
        status, kind = 424, "Backend"
    else:
        kind = "Unhealthy"
    return json_response(status, {"error": err.body["message"], "error_type": kind}, err.headers)


def check_dimensions(enc, dims) -> int:
    """``dimensions`` -> the dim to answer in: absent means the model's default (its ``truncate_dim``, what
    ``Encoder.encode`` returns by default, else its dim: ``Runtime.default_dim``); otherwise one the model
    was trained to embed in (its dim or a declared ``matryoshka_dims`` prefix), else a 422 naming them."""
    allowed = allowed_dims(enc)
    if dims is None:
        return enc.get_embedding_dimension()
    if type(dims) is not int or dims not in allowed:
        raise ApiError(422, f"`dimensions` must be one of {allowed}: this model's dim and the prefixes it was "
                            f"trained to embed in (matryoshka_dims). Given: {given(dims)}.", param="dimensions",
                       code="dimensions_unsupported", limit=allowed, given=dims)
    return dims


def version_header(resp, version: str) -> None:
    """``X-Vector-Version: version`` on ``resp``: every character outside visible ASCII (a space, a control
    character, another script: a model folder's name starts its model_version) and ``%`` percent-encoded as
    UTF-8, so the header is always valid HTTP (``urllib.parse.unquote`` gives the version back)."""
    resp.headers[VERSION_HEADER] = quote(version, safe=_HEADER_SAFE)


def compute_headers(resp, started: float, inputs: list, tokens: int) -> None:
    """text-embeddings-inference's metadata headers on an embedding answer (every embedding route, as TEI's, its
    OpenAI route included): ``X-Compute-Tokens`` (tokens computed), ``X-Compute-Characters`` (characters of the
    inputs; a token-id input counts one per id, as TEI's), ``X-Compute-Time`` and ``X-Total-Time`` (milliseconds
    since the route took the request, ``started``: ``time.monotonic()``). TEI's per-request tokenization, queue
    and inference times are not measured here, so their headers are left out."""
    ms = str(int((time.monotonic() - started) * 1000))
    resp.headers.update({"X-Compute-Tokens": str(tokens), "X-Compute-Characters": str(sum(map(len, inputs))),
                         "X-Compute-Time": ms, "X-Total-Time": ms})


COMPUTE_HEADERS = ("X-Compute-Tokens", "X-Compute-Characters", "X-Compute-Time", "X-Total-Time")


def info_fields(rt) -> dict:
    """TEI's ``/info`` fields (``model_*`` only once the model is loaded)."""
    cfg, enc = rt.cfg, rt.encoder
    d = {"max_concurrent_requests": cfg.max_concurrent_requests, "max_batch_requests": cfg.max_batch_size,
         "max_client_batch_size": cfg.max_inputs, "auto_truncate": AUTO_TRUNCATE, "tokenization_workers": 1,
         "version": __version__, "sha": None, "docker_label": None}
    if enc is not None:
        d.update(model_id=enc.model_version, model_sha=None,
                 model_dtype=_DTYPES.get(enc.backend.precision, enc.backend.precision),
                 model_type={"embedding": {"pooling": enc.model.config.pooling}},
                 max_input_length=enc.max_length, max_batch_tokens=enc.max_batch_tokens)
    return d


def _similarity_item(i: int) -> str:
    """Post i of ``/similarity``'s list (source first) as the request names it."""
    return "inputs.source_sentence" if i == 0 else f"inputs.sentences[{i - 1}]"


def _responses(keyed: tuple) -> dict:
    out = {200: {"description": "OK", "content": {"application/json": {"schema": {"type": "array"}}}}}
    for c in (*keyed, 400, 408, 413, 415, 422, 424, 429, 503):
        out[c] = {"description": _ERRORS[c], "model": ErrorResponse if c == 401 else TeiErrorResponse}
    return out


def add_routes(app, cfg, rt, admission, render, keyed: tuple) -> None:
    """TEI's routes on ``app`` (``routes.create_app``): ``admission`` reads bodies within the limits,
    ``render`` writes a 200 JSON answer, ``keyed`` is (401,) when an API key is required."""
    from fastapi import Request, Response

    responses = _responses(keyed)
    metrics = admission.metrics  # TEI's series: the routes count through admission.parsed, as TEI's do

    async def embed(request: Request):
        started = time.monotonic()
        try:
            async with admission.parsed(request, TeiEmbedRequest, started) as (t, req):
                t.embedding(len(req.inputs))
                enc = rt.require_encoder()
                dim = check_dimensions(enc, req.dimensions)
                truncate = AUTO_TRUNCATE if req.truncate is None else req.truncate
                vecs, tokens, truncated = await rt.embed(
                    req.inputs, "inputs", truncate=truncate, normalize=req.normalize, long_posts=cfg.long_posts,
                    prompt_name=req.prompt_name, truncation_direction=req.truncation_direction)
                if dim < enc.dim:  # the prefix, re-normalised when asked (as Encoder.encode's truncate_dim)
                    vecs = truncate_rows(vecs, dim, req.normalize)
                resp = await render(vecs, vecs.size)
                version_header(resp, rt.vector_version(dim, cfg.long_posts, req.truncation_direction))
        except ApiError as err:
            return tei_error(err)
        resp.headers[TRUNCATED_HEADER] = str(len(truncated))
        compute_headers(resp, started, req.inputs, tokens)
        return resp

    for path in ("/embed", "/", "/invocations"):  # /invocations: SageMaker's, as TEI serves it
        app.add_api_route(path, embed, methods=["POST"], openapi_extra=body_doc(TeiEmbedRequest),
                          response_class=Response, responses=responses, name=f"tei_embed{path.replace('/', '_')}")

    @app.post("/similarity", openapi_extra=body_doc(SimilarityRequest), response_class=Response,
              responses=responses)
    async def similarity(request: Request):
        started = time.monotonic()
        try:
            # TEI embeds the source and the sentences as one batch request
            async with admission.parsed(request, SimilarityRequest, started,
                                        method=lambda obj: "batch" if isinstance(obj.get("inputs"), dict) else None
                                        ) as (t, req):
                # at most max_inputs sentences in all, the source counted (schemas.SimilarityInputs)
                texts = [req.inputs.source_sentence, *req.inputs.sentences]
                p = req.parameters or SimilarityParameters()
                t.embedding(len(texts))
                truncate = AUTO_TRUNCATE if p.truncate is None else p.truncate
                vecs, tokens, truncated = await rt.embed(
                    texts, "inputs", truncate=truncate, normalize=True, long_posts=cfg.long_posts,
                    prompt_name=p.prompt_name, truncation_direction=p.truncation_direction, item=_similarity_item)
                if rt.default_dim < rt.encoder.dim:  # the model's default prefix (truncate_dim), as Encoder's
                    vecs = truncate_rows(vecs, rt.default_dim, True)
                scores = vecs[1:] @ vecs[0]  # cosine: the rows are unit vectors
                resp = await render(scores, 0)
                # the version of the vectors compared
                version_header(resp, rt.vector_version(None, cfg.long_posts, p.truncation_direction))
        except ApiError as err:
            return tei_error(err)
        resp.headers[TRUNCATED_HEADER] = str(len(truncated))
        compute_headers(resp, started, texts, tokens)
        return resp

    @app.post("/tokenize", openapi_extra=body_doc(TokenizeRequest), response_class=Response, responses=responses)
    async def tokenize(request: Request):
        try:
            # TEI counts this route's failures only
            async with admission.parsed(request, TokenizeRequest, None, counted=False) as (_, req):
                enc = rt.require_encoder()
                texts, _ = fit_chars(req.inputs, "inputs[{}]".format, False, cfg.max_input_chars,
                                     truncatable=False)
                texts = rt.prompted(enc, texts, req.prompt_name)
                encs = await rt.off_loop(enc.tokenizer.encodings, texts, req.add_special_tokens)
                _within(sum(len(e.ids) for e in encs), cfg.max_queued_tokens, "inputs", "tokens in all")
        except ApiError as err:
            return tei_error(err)
        out = []
        for e, text in zip(encs, texts):
            at = _byte_offsets(text)
            out.append([{"id": i, "text": tok if special else text[a:b], "special": bool(special),
                         "start": None if special else at[a], "stop": None if special else at[b]}
                        for i, tok, special, (a, b) in zip(e.ids, e.tokens, e.special_tokens_mask, e.offsets)])
        return await render(out, sum(len(e.ids) for e in encs) * 5)

    @app.post("/decode", openapi_extra=body_doc(DecodeRequest), response_class=Response, responses=responses)
    async def decode(request: Request):
        from ..errors import ValidationError

        try:
            # TEI counts this route's failures only
            async with admission.parsed(request, DecodeRequest, None, "ids", counted=False) as (_, req):
                enc = rt.require_encoder()
                ids = req.ids if isinstance(req.ids[0], list) else [req.ids]
                _within(len(ids), cfg.max_inputs, "ids", "lists", "max_inputs")
                _within(sum(map(len, ids)), cfg.max_queued_tokens, "ids", "ids in all")
                try:  # off the event loop, as tokenization: a big batch must not stall the probes
                    texts = await rt.off_loop(enc.tokenizer.decode, ids, req.skip_special_tokens)
                except ValidationError as exc:
                    raise ApiError(422, str(exc), param="ids", code="invalid_value") from None
        except ApiError as err:
            return tei_error(err)
        return json_response(200, texts)

    # TEI serves these for every model; where the model cannot answer them, TEI's 424 model-type
    # error, which TEI clients parse (a 404 in our shape would not tell them why)
    for path, why in WRONG_MODEL_TYPE.items():
        wrong = {424: {"description": f"Backend: {why} (TEI's answer for such a model)", "model": TeiErrorResponse},
                 **{c: responses[c] for c in keyed}}
        app.add_api_route(path, _wrong_model_type(why, metrics), methods=["POST"], response_class=Response,
                          responses=wrong, name=f"tei{path.replace('/', '_')}")


def _within(n: int, limit: int, field: str, what: str, name: str = "max_queued_tokens") -> None:
    """413 naming ``field`` when a request's count ``n`` of ``what`` is more than the server's ``name`` (``limit``):
    the bound of /decode's and /tokenize's answers, which the batcher's queue does not bound."""
    if n > limit:
        raise ApiError(413, f"`{field}` holds {n} {what}, more than {name} ({limit}). Fix: split the request "
                            f"(client), or start the server with a higher --{name.replace('_', '-')} (operator).",
                       param=field, code=name, limit=limit, given=n)


WRONG_MODEL_TYPE = {"/rerank": "model is not a re-ranker model", "/predict": "model is not a classifier model",
                    "/embed_sparse": "model is not an embedding model with SPLADE pooling",
                    "/embed_all": "this server pools each post into one vector and keeps no token vectors: use /embed"}


def _wrong_model_type(why: str, metrics):
    async def answer():
        metrics.tei_failures.labels("model_type").inc()  # as TEI counts a route its model cannot serve
        return json_response(424, {"error": why, "error_type": "Backend"})
    return answer


def _byte_offsets(text: str) -> "list[int] | range":
    """Character offset -> UTF-8 byte offset, for offsets 0..len(text) (TEI's /tokenize counts bytes)."""
    if text.isascii():
        return range(len(text) + 1)
    at = [0]
    for ch in text:
        at.append(at[-1] + len(ch.encode("utf-8", "surrogatepass")))
    return at
