"""Range checks of the near-line numeric settings, in one place for the library (``Worker``,
``stats``: messages name the argument) and ``postemb nearline`` (they name the flag, before
the command connects or loads a model)."""
from __future__ import annotations

import math
from numbers import Integral, Real

from ..errors import ValidationError

# setting: (integer?, lowest allowed, lowest excluded?, what it must be, the fix or "")
RULES = {
    "batch_size": (True, 1, False, "an integer >= 1", " Fix: e.g. 64 (the default)."),
    "max_wait_ms": (False, 0, False, "a number of milliseconds >= 0", " Fix: e.g. 10 (the default)."),
    "claim_idle_ms": (True, 1, False, "an integer number of milliseconds >= 1", " Fix: e.g. 30000 (the default)."),
    "forget_idle_ms": (True, 0, False, "an integer number of milliseconds >= 0 (0: never)",
                       " Fix: e.g. 3600000 (the default: one hour), or 0 to keep every consumer."),
    "max_deliveries": (True, 1, False, "an integer >= 1",
                       " Fix: a small count such as 10 (the default): an event delivered more often than this "
                       "is poison (it crashed or hung the worker) and is dead-lettered; without a bound it would "
                       "be retried forever."),
    "max_attempts": (True, 1, False, "an integer >= 1", " Fix: e.g. 3 (the default)."),
    "model_timeout_s": (False, 0, False, "a number of seconds >= 0 (0 or None: no bound)",
                        " Fix: e.g. 60 (the default), or 0 for no bound."),
    "window_s": (False, 0, True, "a number of seconds > 0", " Fix: e.g. 60 (the default)."),
    "threads": (True, 0, False, "an integer >= 0 (0 or None: the backend's default)",
                " Fix: e.g. 1 for each of 2 workers on 2 cores, or 0 for the default."),
}
OPTIONAL = ("model_timeout_s", "threads")  # None allowed: no bound / the default


def check(names: dict | None = None, **settings) -> None:
    """Raise ValidationError for the first setting out of range (``RULES``).

    names: {setting: how the message names it}, e.g. {"max_deliveries": "--max-deliveries"}
    for the command's flags; default: the argument's own name."""
    for key, value in settings.items():
        if value is None and key in OPTIONAL:
            continue
        integer, low, excluded, what, fix = RULES[key]
        kind = Integral if integer else Real
        ok = (isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
              and (value > low if excluded else value >= low))
        if not ok:
            name = (names or {}).get(key, key)
            raise ValidationError(f"`{name}` must be {what}. Given: {value!r}.{fix}")
