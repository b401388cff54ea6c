"""Prompts, as sentence-transformers defines them: text prepended to every input before tokenization.

A model's prompts come from ``postemb.json`` (``prompts``, ``default_prompt_name``) or a
sentence-transformers folder's ``config_sentence_transformers.json`` (postemb_rt.st_folder), and
``Encoder.from_pretrained(prompts=..., default_prompt_name=...)`` sets them over those (``overridden``). The
names ``"query"`` and ``"document"`` always exist, as in sentence-transformers >= 5 (empty unless
the model sets them), so ``prompt_name="query"`` works on any model.

Which prompt applies (``resolve``), as ``SentenceTransformer.encode``: an explicit ``prompt``
(``""`` means none, and also switches the default off); else ``prompt_name``'s text; else the
model's default prompt, if it has one; else none. Both ``prompt`` and ``prompt_name`` given is an
error here (sentence-transformers logs a warning and uses ``prompt``).

The prompt counts towards ``max_length`` (it is part of the text; a long post loses its end,
never the prompt), and in ``long_posts="chunk"`` mode it is in the first window only. It is an
input, not part of the model: ``model_version`` and ``vector_version`` do not name it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from .errors import ValidationError

BUILTIN_NAMES = ("query", "document")  # always present, "" unless the model sets them


def check_prompts(prompts, default_prompt_name, include_prompt, where) -> None:
    """Raise ValidationError unless ``prompts`` is None or {name: str}, ``default_prompt_name`` is
    None or one of its names, and ``include_prompt`` is False only when no default prompt applies
    (postemb_rt pools every token: a Pooling with ``include_prompt: false`` is not computed)."""
    if prompts is not None and not (isinstance(prompts, dict)
                                    and all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items())):
        raise ValidationError(f"`prompts` in {where} must be a mapping of prompt name to text. Given: {prompts!r}.")
    if default_prompt_name is not None and default_prompt_name not in (prompts or {}):
        raise ValidationError(
            f"`default_prompt_name` in {where} must be one of the prompts {sorted(prompts or {})}. "
            f"Given: {default_prompt_name!r}. Fix: add it to `prompts`, or set it to null (None).")
    if not include_prompt and default_prompt_name is not None and prompts[default_prompt_name]:
        raise ValidationError(
            f"{where}: the default prompt {default_prompt_name!r} would be left out of pooling "
            "(Pooling include_prompt: false), which postemb_rt does not compute: it pools every token. "
            "Fix: set default_prompt_name to null, or load the folder with sentence-transformers.")


def overridden(config, prompts=None, default_prompt_name=None, where: str = "Encoder.from_pretrained(...)"):
    """``config`` (a PostEmbConfig) with sentence-transformers' constructor arguments over its own: ``prompts``
    ({name: text}) replace the model's prompts of those names and add the others; ``default_prompt_name`` (None:
    the model's) names the default, a built-in name too. ``config`` itself when neither is given; else checked as
    a model's own prompts are (``check_prompts``: ValidationError naming ``where``)."""
    if prompts is None and default_prompt_name is None:
        return config
    prompts = dict(prompts) if isinstance(prompts, Mapping) else prompts  # e.g. another Encoder's .prompts
    check_prompts(prompts, None, True, where)  # the given ones: a mapping of str to str
    merged = {**(config.prompts or {}), **(prompts or {})}
    name = config.default_prompt_name if default_prompt_name is None else default_prompt_name
    check_prompts({**dict.fromkeys(BUILTIN_NAMES, ""), **merged}, name, config.include_prompt, where)
    return dataclasses.replace(config, prompts=merged or None, default_prompt_name=name)


def model_prompts(config) -> dict[str, str]:
    """{name: text} of a PostEmbConfig: the built-in names ("" unless set), then the model's."""
    return {**dict.fromkeys(BUILTIN_NAMES, ""), **(config.prompts or {})}


def name_in_use(config, prompt_name: str | None = None) -> str | None:
    """The prompt name that applies when no ``prompt`` text is given: ``prompt_name``, else the default
    prompt name of the model with this PostEmbConfig (None: none, or no config); not checked here."""
    return prompt_name if prompt_name is not None else getattr(config, "default_prompt_name", None)


def resolve(config, prompt: str | None = None, prompt_name: str | None = None,
            fix: str = "use one of those, or pass the text as `prompt`") -> str:
    """The prompt text to prepend ("" for none) for a call with these arguments on a model with
    this PostEmbConfig; see the module docstring for the rule. Raises ValidationError; ``fix`` is
    its advice for an unknown ``prompt_name`` (the HTTP routes take no ``prompt``)."""
    if prompt is not None and prompt_name is not None:
        raise ValidationError(
            f"give `prompt` or `prompt_name`, not both. Given: prompt={prompt!r}, prompt_name={prompt_name!r}. "
            "Fix: drop one (sentence-transformers would ignore prompt_name).")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValidationError(f"`prompt` must be a str. Given: {type(prompt).__name__}.")
        text = prompt
    else:
        known = model_prompts(config)
        name = name_in_use(config, prompt_name)
        if name is None:
            return ""
        if name not in known:
            raise ValidationError(
                f"`prompt_name` must be one of this model's prompts {sorted(known)}. Given: {name!r}. "
                f"Fix: {fix}.")
        text = known[name]
    if text and not config.include_prompt:
        raise ValidationError(
            f"this model's Pooling has include_prompt: false (prompt tokens left out of pooling), which "
            f"postemb_rt does not compute. Given prompt: {text!r}. Fix: encode without a prompt, or use "
            "sentence-transformers for this model.")
    return text


def recorded_name(config, prompt: str | None = None, prompt_name: str | None = None) -> str | None:
    """The prompt name to record beside vectors embedded with these arguments (``resolve``'s rule): the
    name given, else the model's default prompt name; "" for no prompt (none applies, or ``prompt=""``);
    None for a ``prompt`` text, which has no name (an index then says "not known")."""
    if prompt is not None:
        return "" if prompt == "" else None
    name = name_in_use(config, prompt_name)
    return "" if name is None else name


def apply(texts: list[str], prompt: str) -> list[str]:
    """``prompt + text`` for each text (texts unchanged, not copied, for the empty prompt)."""
    return [prompt + t for t in texts] if prompt else texts
