"""The served models: one :class:`Runtime` (its own encoder and dynamic batcher) per ``--model``,
loaded in order on the load thread, and the lookup of a request's ``model`` field.

A model is served under its NAME (``--model NAME=MODEL``), else its ``model_version``. A request
may also name it by an alias: its ``model_version``, and for a model given without a NAME the MODEL
as the operator typed it (``--model default --model base`` answers to "default" and "base"), when
that alias names one served model only (a served name always wins; an alias two models share is a
404 naming their served names). The first ``--model`` is the default model: requests without a
``model`` field, and text-embeddings-inference's routes (which have none), get it. A server with
one model ignores the field, as it always has (clients that hard-code a model name keep working);
with several, an unknown name is a 404 ``model_not_found`` (OpenAI's answer). ``/v1/models`` lists
each model once, ``id`` its served name, ``aliases`` the others; ``/v1/models/{id}`` takes either."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable

from ..encode_options import allowed_dims
from .config import ServeConfig
from .errors import NO_RETRY, ApiError, retry_after
from .runtime import Runtime

log = logging.getLogger("postemb_rt.server")


class ModelRegistry:
    """``runtimes`` in ``--model`` order (``default`` is the first); ``resolve(name)`` -> Runtime.
    ``load_encoder`` (() -> Encoder, tests inject faults here) is for a one-model ``cfg`` only."""

    def __init__(self, cfg: ServeConfig, load_encoder: Callable | None = None):
        specs = cfg.model_specs()
        self.cfg = cfg
        self.multi = len(specs) > 1
        if self.multi and load_encoder is not None:
            raise ValueError("`load_encoder` serves one model; this config names "
                             f"{len(specs)}. Fix: one model per app when injecting a loader.")
        # one model: the Runtime gets cfg itself (as before); several: each its own copy naming its model
        self.runtimes = [Runtime(dataclasses.replace(cfg, model=model) if self.multi else cfg, load_encoder, name)
                         for name, model in specs]
        self.default = self.runtimes[0]
        self._specs = [model for _, model in specs]
        self._entries = [cfg.model] if isinstance(cfg.model, str) else list(cfg.model)  # as given: messages
        # served names (and, once every model is loaded, unambiguous aliases) -> Runtime
        self._by_name = {name: rt for (name, _), rt in zip(specs, self.runtimes) if name is not None}
        self._typed = [model if name is None else None for name, model in specs]  # an unnamed model's alias
        self._shared: dict[str, list[Runtime]] = {}  # aliases of several models -> those models
        self.loaded = False  # every model loaded and its name in the table
        self._error: str | None = None
        self._closed = False
        self.on_fatal: Callable[[], None] = lambda: None  # set by `postemb serve`: stop the server
        self.on_loaded: Callable[[], None] = lambda: None  # set by `postemb serve`: say what runs

    # -- lifecycle ---------------------------------------------------------------------
    def load(self) -> None:
        """Loads each model in turn (on the caller's thread: the app's load thread); the first that
        fails, or two models served under one name, fails the server (``load_error``, ``on_fatal``)."""
        for rt, entry in zip(self.runtimes, self._entries):
            if self._closed:
                return
            rt.on_fatal = lambda: None  # reported below, once
            rt.load()
            if rt.load_error is not None:
                self._fail(f"the model {entry!r} failed to load: {rt.load_error}" if self.multi else
                           f"the model failed to load: {rt.load_error}")
                return
        by_name = dict(self._by_name)
        for rt, entry, spec in zip(self.runtimes, self._entries, self._specs):
            other = by_name.setdefault(rt.name, rt)
            if other is not rt:
                self._fail(f"two models are served as {rt.name!r}: --model "
                           f"{self._entries[self.runtimes.index(other)]!r} and --model {entry!r} (a model without "
                           "a NAME is served under its model_version). Fix: name them, --model NAME=MODEL (e.g. "
                           f"--model {rt.name}-2={spec}).", log_it=True)
                return
        claims: dict[str, list[Runtime]] = {}  # alias -> the models it could name
        for rt in self.runtimes:
            for alias in self._candidates(rt):
                if alias not in by_name:  # a served name always names its own model
                    claims.setdefault(alias, []).append(rt)
        self._shared = {alias: rts for alias, rts in claims.items() if len(rts) > 1}
        by_name.update({alias: rts[0] for alias, rts in claims.items() if len(rts) == 1})
        self._by_name = by_name
        self.loaded = True
        self.on_loaded()

    def summary(self) -> str:
        """What each loaded model runs on, for the log: served name, backend, precision and why,
        vector version."""
        return "; ".join(f"{rt.name!r}{self._typed_note(rt)} on {rt.encoder.backend.name} "
                         f"{rt.encoder.backend.precision} ({rt.encoder.precision_reason}), "
                         f"vectors {rt.vector_version(None, rt.cfg.long_posts)}"
                         for rt in self.runtimes)

    def _typed_note(self, rt: Runtime) -> str:
        typed = self._typed[self.runtimes.index(rt)]
        return f" (--model {typed})" if typed is not None and typed != rt.name else ""

    def _candidates(self, rt: Runtime) -> list[str]:
        """``rt``'s (loaded) possible aliases: the MODEL typed for it when it has no NAME, its model_version."""
        typed = self._typed[self.runtimes.index(rt)]
        return list(dict.fromkeys(a for a in (typed, rt.encoder.model_version) if a is not None and a != rt.name))

    def aliases(self, rt: Runtime) -> list[str]:
        """The names besides its served name that a request may give ``rt`` by, once every model is loaded:
        its possible aliases (the MODEL typed for it without a NAME, its model_version) that name it alone."""
        return [a for a in self._candidates(rt) if self._by_name.get(a) is rt] if self.loaded else []

    def _fail(self, error: str, log_it: bool = False) -> None:
        self._error = error
        if log_it:  # a Runtime's own load failure is logged by it
            log.error("postemb serve: %s", error)
        self.on_fatal()

    @property
    def load_error(self) -> str | None:
        """Why the server failed to start: a model's load error, or two models served under one name
        (a sentence, e.g. "the model failed to load: OSError: ...")."""
        return self._error

    def close(self) -> None:
        """Drain every batcher and release every model (see ``Runtime.close``)."""
        self._closed = True
        for rt in self.runtimes:
            rt.close()

    # -- requests ----------------------------------------------------------------------
    def resolve(self, name: str | None, exact: bool = False) -> Runtime:
        """The Runtime a request's ``model`` field names (a served name or an alias); the default one for
        None, and for any name with one model unless ``exact`` (``/v1/models/{id}``). Otherwise 404
        ``model_not_found`` for an unknown name, 503 ``loading`` while a model it might be (an alias is
        known once every model is loaded) is still loading."""
        if name is None or not (self.multi or exact):
            return self.default
        rt = self.lookup(name)
        if rt is not None:
            return rt
        if self._error is not None:  # the detail is in the log, never in an answer
            raise ApiError(503, "A model failed to load; the server log says why.", type="server_error",
                           code="model_load_failed", headers=NO_RETRY)
        if not self.loaded:
            raise ApiError(503, "The models are still loading; retry shortly.", type="server_error",
                           code="loading", headers=retry_after(1))
        raise ApiError(404, f"The model {name!r} does not exist on this server. Served models: {self.names()} "
                            "(GET /v1/models). Fix: send one of them as `model`, or leave `model` out for the "
                            f"default ({self.default.name!r}).", param="model", code="model_not_found")

    def lookup(self, name: str) -> Runtime | None:
        """The model ``name`` names (a served name or an alias; any number of models), None when it names
        none; 404 ``model_not_found`` when it is an alias of several, naming their served names."""
        rt = self._by_name.get(name)
        if rt is None and name in self._shared:
            served = [m.name for m in self._shared[name]]
            raise ApiError(404, f"The model {name!r} names {len(served)} served models: {served} (it is the "
                                "model_version or the --model of each). Fix: send one of their served names as "
                                "`model` (GET /v1/models lists them).", param="model", code="model_not_found")
        return rt

    def retry_after_s(self) -> float:
        """Seconds until every model's queued and in-flight tokens are computed at its measured rate
        (``Runtime.retry_after_s``; 1 before any batcher runs): the wait a 429 for the server's own limits
        asks for (``errors.retry_after``)."""
        return max([rt.retry_after_s() for rt in self.runtimes if rt.batcher is not None], default=1.0)

    def names(self) -> list[str]:
        """Served names in --model order (an unnamed model's is known once it is loaded)."""
        return [rt.name or spec for rt, spec in zip(self.runtimes, self._specs)]

    def describe(self) -> list[dict]:
        """``/info``'s ``models``: each served model's name, version, dim, allowed ``dimensions``, the
        ``default_dimensions`` a request naming none gets (its truncate_dim, else its dim) and state."""
        out = []
        for rt, spec in zip(self.runtimes, self._specs):
            enc = rt.encoder
            d = {"name": rt.name or spec, "model": spec, "default": rt is self.default, "ready": rt.ready}
            if enc is not None:
                d.update(aliases=self.aliases(rt), model_version=enc.model_version,
                         vector_version=rt.vector_version(None, rt.cfg.long_posts), dim=enc.dim,
                         max_length=enc.max_length, backend=enc.backend.name, precision=enc.backend.precision,
                         dimensions=allowed_dims(enc), default_dimensions=rt.default_dim)
            out.append(d)
        return out
