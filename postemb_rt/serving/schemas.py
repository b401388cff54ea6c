"""Request bodies, declared once: each pydantic model below is both the OpenAPI schema of a
route's body (``body_doc``) and its validation (``parse``), with errors that name the
field, the index and the value given (``ApiError``, OpenAI-shaped)."""
from __future__ import annotations

import json
import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationInfo, WithJsonSchema,
                      field_validator, model_validator)
from pydantic import ValidationError as PydanticValidationError

from .config import ServeConfig
from .errors import ApiError

Texts = Annotated[str | Annotated[list[str], Field(min_length=1)],
                  Field(description="a string or a list of strings")]
_IDS_SCHEMA = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
# text-embeddings-inference's `inputs`: a string, one input's token ids, or a list of strings and token-id lists
TeiInputs = Annotated[Any, WithJsonSchema({"anyOf": [
    {"type": "string"}, _IDS_SCHEMA, {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "string"},
                                                                                          _IDS_SCHEMA]}}]}),
    Field(description="a string, a list of token ids (one input's, as /tokenize gives them), or a list of those")]
LongPosts = Literal["truncate", "chunk"]


def type_name(v) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def given(v) -> str:
    s = json.dumps(v, ensure_ascii=True)
    return s if len(s) <= 60 else s[:57] + "..."


def _texts(value, info: ValidationInfo) -> list[str]:
    """A field validator: ``check_texts`` under the ``cfg`` in the validation context."""
    return check_texts(value, info.field_name, _cfg(info))


def _cfg(info: ValidationInfo) -> ServeConfig:
    return (info.context or {}).get("cfg") or ServeConfig()


def _token_ids(value) -> bool:
    """Whether ``value`` is meant as one input's token ids: a JSON array whose first item is an integer."""
    return isinstance(value, list) and bool(value) and type(value[0]) is int


def check_texts(value, field: str, cfg: ServeConfig, ids: bool = False, one: bool = False) -> list:
    """``value`` as a non-empty list of non-empty str, at most ``cfg.max_inputs`` of them; errors
    name ``field`` (an item ``field[i]``; ``one``: a field that is never a list, ``field`` alone). Characters
    per post (``max_input_chars``) are the runtime's: it cuts a long post when the request truncates
    (``tokens.fit_chars``). ``ids`` (text-embeddings-inference's /embed):
    an input may also be its token ids, a non-empty list of ints >= 0 (a list of ints alone is one
    input); the runtime checks them against the model (``tokens.fit_ids``)."""
    kinds = "a string, a list of token ids, or a list of those" if ids else "a string or a list of strings"
    if isinstance(value, str) or (ids and _token_ids(value)):
        value = [value]
    elif not isinstance(value, list):
        raise ApiError(422, f"`{field}` must be {kinds}. Given: {type_name(value)} {given(value)}.", param=field,
                       code="invalid_type")
    if not value:
        raise ApiError(422, f"`{field}` must hold at least one {'input' if ids else 'string'}. Given: an empty "
                            "list.", param=field, code="empty_input")
    if len(value) > cfg.max_inputs:
        langchain = f"; LangChain's OpenAIEmbeddings: chunk_size={cfg.max_inputs}" if field == "input" else ""
        raise ApiError(413, f"`{field}` holds {len(value)} {'inputs' if ids else 'strings'}, more than max_inputs "
                            f"({cfg.max_inputs}). Fix: split the request into requests of at most {cfg.max_inputs} "
                            f"(client{langchain}), or start the server with a higher --max-inputs (operator).",
                       param=field, code="max_inputs", limit=cfg.max_inputs, given=len(value))
    for i, t in enumerate(value):
        name = field if one else f"{field}[{i}]"
        if ids and isinstance(t, list):
            _check_ids(t, name)
            continue
        if not isinstance(t, str):
            hint = ""
            if not ids and (type(t) is int or _token_ids(t)):  # token ids (an array of ints), on a text route
                hint = (" Token-id arrays are not supported (an OpenAI client's are its own tokenizer's ids, not "
                        "this model's): send text; LangChain's OpenAIEmbeddings: check_embedding_ctx_length=False."
                        if field == "input" else " Token ids are taken by POST /embed (and /, /invocations) only, "
                        "as text-embeddings-inference: send text here.")
            what = "a string or a list of token ids" if ids else "a string"
            raise ApiError(422, f"`{name}` must be {what}. Given: {type_name(t)} {given(t)}.{hint}",
                           param=name, code="invalid_type")
        if not t:  # as text-embeddings-inference and OpenAI: [CLS][SEP] alone is no post's vector
            raise ApiError(422, f"`{name}` is an empty string: there is nothing to embed. Fix: leave it out "
                                "of the request.", param=name, code="empty_string")
        if not t.isascii():
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate such as "\ud800" from JSON escapes
                raise ApiError(422, f"`{name}` is not valid Unicode text: {exc.reason} at character "
                                    f"{exc.start}.", param=name, code="invalid_text") from None
    return value


def _check_ids(row: list, name: str) -> None:
    """One input's token ids: a non-empty list of ints >= 0 (the model's vocabulary: ``tokens.fit_ids``)."""
    if not row:  # as an empty string: [CLS][SEP] alone is no post (TEI: "`inputs` cannot be empty")
        raise ApiError(422, f"`{name}` is an empty list of token ids: there is nothing to embed. Fix: leave it out "
                            "of the request.", param=name, code="empty_string")
    k = next((k for k, x in enumerate(row) if type(x) is not int or x < 0), None)
    if k is not None:
        raise ApiError(422, f"`{name}[{k}]` must be a token id (an integer >= 0). Given: {type_name(row[k])} "
                            f"{given(row[k])}.", param=name, code="invalid_type")


def _inputs(value, info: ValidationInfo) -> list:
    """A field validator: ``check_texts`` with token-id inputs allowed (text-embeddings-inference's /embed)."""
    return check_texts(value, info.field_name, _cfg(info), ids=True)


def _null_is_default(cls, value, info: ValidationInfo):
    return cls.model_fields[info.field_name].default if value is None else value


# a prompt or model name longer than this is no name: refused (422) before an error could echo it whole
NAME_MAX_CHARS = 256
PromptName = ModelName = Optional[Annotated[StrictStr, Field(max_length=NAME_MAX_CHARS)]]
MODEL_DOC = ("a served model's name (GET /v1/models) or model_version; null: the default model (the first "
             "--model); ignored by a server with one model, which serves it whatever the name")
PROMPT_DOC = "a prompt of the model's (`prompts`), prepended to each input; null: the model's default prompt, if any"
# checked against the served model by the route (tei.check_dimensions)
Dimensions = Annotated[Any, WithJsonSchema({"type": "integer"}), Field(
    description="the model's dim or a prefix it declares (GET /info `dimensions`); null: the model's default "
                "(`default_dimensions`: its truncate_dim if it declares one, else its dim)")]


class V1EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings`` (OpenAI-compatible). Unknown fields are ignored: OpenAI clients
    send extras. ``dimensions`` is checked against the served model by the route."""

    model_config = ConfigDict(extra="ignore")

    input: Texts
    encoding_format: Literal["float", "base64"] = "float"
    model: ModelName = Field(None, description=MODEL_DOC)
    dimensions: Dimensions = None
    user: Annotated[Any, WithJsonSchema({"type": "string"})] = None  # ignored
    embedding_type: Literal["float", "int8", "uint8", "binary", "ubinary"] = Field(
        "float", description="our extension (the openai client sends it in extra_body): int8 / uint8 / binary "
                             "(= ubinary, packed sign bits) as Encoder.encode(precision=...), integers; needs "
                             "encoding_format float (base64 is float32's)")
    prompt_name: PromptName = Field(None, description=PROMPT_DOC + " (our extension, as embedding_type)")

    _check_input = field_validator("input", mode="before")(_texts)
    _defaults = field_validator("encoding_format", mode="before")(classmethod(_null_is_default))

    @model_validator(mode="after")
    def _base64_is_float32(self):
        """OpenAI's base64 is float32 bytes: the openai clients ask for it by default and decode every base64 row
        as float32, so quantized rows' raw bytes became garbage floats (no error when their bytes are a multiple
        of 4, e.g. a 384-d int8 row gave 96 numbers). Refused, never silently misread."""
        if self.embedding_type != "float" and self.encoding_format == "base64":
            raise ApiError(422, f"`encoding_format` base64 is float32 bytes (OpenAI's API; the openai clients ask "
                                f"for it by default and decode it as float32), and `embedding_type` "
                                f"{self.embedding_type!r} rows are not float32. Given: base64. Fix: send "
                                'encoding_format="float" with it (the rows are then integers).',
                           param="encoding_format", code="invalid_value")
        return self


class EmbedRequest(BaseModel):
    """``POST /embed_full`` (native, the richer answer). Unknown fields are a 422."""

    model_config = ConfigDict(extra="forbid")

    inputs: Texts
    truncate: StrictBool = True
    normalize: StrictBool = True
    encoding: Literal["float32", "int8", "uint8", "binary", "ubinary"] = Field(
        "float32", description="int8 / uint8: Encoder.encode(precision=...)'s calibrated ranges (GET /info); "
                               "binary (= ubinary): packed sign bits, unsigned bytes")
    long_posts: Optional[LongPosts] = Field(None, description="default: the server's --long-posts")
    prompt_name: PromptName = Field(None, description=PROMPT_DOC)
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    model: ModelName = Field(None, description=MODEL_DOC)
    dimensions: Dimensions = None

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data):
        unknown = sorted(set(data) - set(cls.model_fields)) if isinstance(data, dict) else []
        if unknown:
            raise ApiError(422, f"Unknown field `{unknown[0]}`. Known fields: {list(cls.model_fields)}.",
                           param=unknown[0], code="unknown_field")
        return data

    _check_inputs = field_validator("inputs", mode="before")(_texts)
    _defaults = field_validator("encoding", mode="before")(classmethod(_null_is_default))

    @model_validator(mode="after")
    def _quantized_needs_unit_rows(self):
        if self.encoding != "float32" and not self.normalize:
            raise ApiError(422, f"`normalize` must be true with encoding {self.encoding!r}, which is calibrated "
                                "for unit vectors. Given: false.", param="normalize", code="invalid_value")
        return self


NATIVE_ONLY = ("encoding", "long_posts")  # fields of /embed_full that text-embeddings-inference's /embed lacks


class TeiEmbedRequest(BaseModel):
    """``POST /embed`` and ``POST /``, text-embeddings-inference's request: unknown fields are
    ignored as TEI does, except our native ones, which name /embed_full (never a silent change)."""

    model_config = ConfigDict(extra="ignore")

    inputs: TeiInputs
    normalize: StrictBool = True
    truncate: Optional[StrictBool] = Field(None, description="null: the server's auto_truncate (true)")
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    prompt_name: PromptName = Field(None, description=PROMPT_DOC)
    dimensions: Dimensions = None

    @model_validator(mode="before")
    @classmethod
    def _other_routes_requests(cls, data):
        """A request meant for another route gets a 422 naming that route: /embed_full's native fields, or
        /similarity's body (``InferenceClient(base_url=URL).sentence_similarity`` posts it to ``/``)."""
        inputs = data.get("inputs") if isinstance(data, dict) else None
        if isinstance(inputs, dict) and "source_sentence" in inputs:
            raise ApiError(422, "`inputs` is a similarity request ({source_sentence, sentences}), and this route "
                                "embeds (POST /, /embed, /invocations, as text-embeddings-inference's for an "
                                "embedding model). Fix: send it to POST /similarity (huggingface_hub: "
                                'InferenceClient(base_url=URL + "/similarity").sentence_similarity).', param="inputs",
                           code="invalid_type")
        moved = [k for k in NATIVE_ONLY if isinstance(data, dict) and k in data]
        if moved:
            raise ApiError(422, f"`{moved[0]}` is a field of POST /embed_full, where the native answer moved; /embed "
                                "follows text-embeddings-inference (a bare array of vectors). Fix: send it to "
                                "/embed_full.", param=moved[0], code="moved_to_embed_full")
        return data

    _check_inputs = field_validator("inputs", mode="before")(_inputs)
    _defaults = field_validator("normalize", "truncation_direction", mode="before")(classmethod(_null_is_default))


class SimilarityInputs(BaseModel):
    """``inputs`` of ``POST /similarity``: one sentence and the sentences to score against it."""

    model_config = ConfigDict(extra="ignore")

    source_sentence: StrictStr = Field(description="the sentence the others are compared with")
    sentences: list[str] = Field(description="the sentences to score: a list of strings")

    @field_validator("source_sentence", mode="before")
    @classmethod
    def _check_source(cls, value, info: ValidationInfo):
        if not isinstance(value, str):  # a list here is a mistake, not a batch: one source per request
            raise ApiError(422, f"`inputs.source_sentence` must be a string. Given: {type_name(value)} "
                                f"{given(value)}.", param="inputs.source_sentence", code="invalid_type")
        return check_texts(value, "inputs.source_sentence", _cfg(info), one=True)[0]  # every input's limits

    @field_validator("sentences", mode="before")
    @classmethod
    def _check_sentences(cls, value, info: ValidationInfo):
        if isinstance(value, str):  # as TEI: a list always (one string would be scored alone, likely a mistake)
            raise ApiError(422, f"`inputs.sentences` must be a list of strings. Given: string {given(value)}. Fix: "
                                "send [\"...\"].", param="inputs.sentences", code="invalid_type")
        cfg = _cfg(info)
        if isinstance(value, list) and len(value) >= cfg.max_inputs:  # the source sentence counts too
            raise ApiError(413, f"`inputs` holds {len(value) + 1} sentences (source_sentence and sentences), more "
                                f"than max_inputs ({cfg.max_inputs}). Fix: split the request into requests of at most "
                                f"{cfg.max_inputs - 1} sentences (client), or start the server with a higher "
                                "--max-inputs (operator).", param="inputs.sentences", code="max_inputs",
                           limit=cfg.max_inputs, given=len(value) + 1)
        return check_texts(value, "inputs.sentences", cfg)


class SimilarityParameters(BaseModel):
    """``parameters`` of ``POST /similarity`` (text-embeddings-inference's)."""

    model_config = ConfigDict(extra="ignore")

    truncate: Optional[StrictBool] = Field(None, description="null: the server's auto_truncate (true)")
    truncation_direction: Literal["right", "left", "Right", "Left"] = "right"
    prompt_name: PromptName = Field(None, description=PROMPT_DOC)

    _defaults = field_validator("truncation_direction", mode="before")(classmethod(_null_is_default))


class SimilarityRequest(BaseModel):
    """``POST /similarity``, text-embeddings-inference's request (``huggingface_hub``'s
    ``InferenceClient.sentence_similarity`` sends it): unknown fields are ignored, as TEI does."""

    model_config = ConfigDict(extra="ignore")

    inputs: SimilarityInputs = Field(description="source_sentence (a string) and sentences (a list of strings)")
    parameters: Optional[SimilarityParameters] = Field(None, description="truncate, truncation_direction, "
                                                                         "prompt_name; null: their defaults")


class TokenizeRequest(BaseModel):
    """``POST /tokenize`` (text-embeddings-inference's)."""

    model_config = ConfigDict(extra="ignore")

    inputs: Texts
    add_special_tokens: StrictBool = True
    prompt_name: PromptName = Field(None, description=PROMPT_DOC)

    _check_inputs = field_validator("inputs", mode="before")(_texts)


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class DecodeRequest(BaseModel):
    """``POST /decode`` (text-embeddings-inference's): token ids, one list or a list of lists."""

    model_config = ConfigDict(extra="ignore")

    ids: Annotated[TokenIds | list[TokenIds], Field(description="token ids: a list, or a list of lists")]
    skip_special_tokens: StrictBool = True

    @field_validator("ids", mode="before")
    @classmethod
    def _strict_ints(cls, v):
        rows = v if isinstance(v, list) and v and isinstance(v[0], list) else [v]
        for i, row in enumerate(rows):
            if not isinstance(row, list) or not row or any(type(x) is not int or x < 0 for x in row):
                raise ApiError(422, f"`ids` must be a non-empty list of token ids (integers >= 0), or a list of "
                                    f"such lists. Given: {given(row if len(rows) > 1 else v)}.",
                               param="ids" if len(rows) == 1 else f"ids[{i}]", code="invalid_value")
        return v


class TeiErrorResponse(BaseModel):
    """text-embeddings-inference's error answer (its routes): ``error_type`` is Validation (413,
    422), Empty (400), Overloaded (429), Backend (424) or Unhealthy (503)."""

    error: str
    error_type: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]
    limit: Any = None  # limit errors (413): the limit and the value given
    given: Any = None


class ErrorResponse(BaseModel):
    """Every error answer: ``{"error": {...}}``, OpenAI-shaped."""

    error: ErrorDetail


def _literals(annotation) -> list:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return list(args)
    return [x for a in args for x in _literals(a)]


def _field_at(model: type[BaseModel], loc: tuple):
    """The pydantic field at ``loc`` (through nested request models), or None."""
    field = None
    for key in loc:
        fields = getattr(model, "model_fields", None) or {}
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            return None
        model = next((a for a in (field.annotation, *typing.get_args(field.annotation))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return field


def parse(model: type[BaseModel], obj: dict, cfg: ServeConfig) -> BaseModel:
    """``obj`` (a JSON object) validated as ``model`` under ``cfg``'s limits; ApiError if not."""
    try:
        return model.model_validate(obj, context={"cfg": cfg})
    except PydanticValidationError as exc:
        e = exc.errors(include_url=False)[0]
        name = ".".join(map(str, e["loc"])) or "body"  # a nested field as `inputs.sentences`
        v, t = e.get("input"), e["type"]
        field = _field_at(model, e["loc"])
        about = f": {field.description}" if field is not None and field.description else ""
        if t == "missing":
            raise ApiError(422, f"`{name}` is required{about}.", param=name, code="missing_field") from None
        if t in ("model_type", "model_attributes_type", "dict_type"):
            raise ApiError(422, f"`{name}` must be an object{about}. Given: {type_name(v)} {given(v)}.", param=name,
                           code="invalid_type") from None
        if t == "literal_error" and field is not None:
            raise ApiError(422, f"`{name}` must be one of {_literals(field.annotation)}. Given: {given(v)}.",
                           param=name, code="invalid_value") from None
        if t == "bool_type":
            raise ApiError(422, f"`{name}` must be true or false. Given: {type_name(v)} {given(v)}.", param=name,
                           code="invalid_type") from None
        if t == "string_type":
            raise ApiError(422, f"`{name}` must be a string. Given: {type_name(v)}.", param=name,
                           code="invalid_type") from None
        raise ApiError(422, f"`{name}`: {e['msg']}. Given: {given(v)}.", param=name, code="invalid_value") from None


def body_doc(model: type[BaseModel]) -> dict:
    """The OpenAPI ``requestBody`` of a route whose body is ``model``."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def json_object(body: bytes) -> dict:
    """The request body (bytes, read by ``auth.Admission``) as a JSON object; 422 if it is not one."""
    try:
        obj = json.loads(body, parse_constant=_not_json)  # NaN / Infinity: Python reads them, JSON has none
    except RecursionError:
        raise ApiError(422, "The request body nests JSON too deeply.", param="body", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
        raise ApiError(422, f"The request body is not valid JSON: {exc}.", param="body",
                       code="invalid_json") from None
    if not isinstance(obj, dict):
        raise ApiError(422, f"The request body must be a JSON object. Given: {type_name(obj)}.", param="body",
                       code="invalid_type")
    return obj


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value (JSON has no NaN or Infinity)")
