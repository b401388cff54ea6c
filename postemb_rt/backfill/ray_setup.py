"""Starting Ray for a backfill, and keeping Ray's expected chatter from the user (its warnings
and errors still show; ``postemb -v`` shows its INFO lines too).

Left alone: a line from Ray's C++ core, "Actor ... has constructor arguments in the object store
and max_restarts > 0", which Ray Data logs for every actor pool (the line links ray-project/ray#53727; its own
bookkeeping, not our arguments); it cannot be filtered from Python.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from ..cpu import usable_cpus
from ..logs import dropped

log = logging.getLogger("postemb_rt.backfill")


def ray_init(ray_address: str | None, num_cpus: int | None) -> bool:
    """Connect (or start a local Ray). Returns True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    # Ray's notice that token authentication is on (its default when RAY_AUTH_MODE is unset) is not
    # the user's business in a backfill; a notice that it is off, or any other warning, still shows
    with dropped("ray._private.authentication.authentication_token_setup",
                 lambda r: r.getMessage().startswith("Token authentication is enabled for this Ray cluster")):
        if ray_address:
            ray.init(address=ray_address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus or usable_cpus(), **kwargs)  # a CPU mask or quota, else every CPU
    return True


@contextmanager
def quiet_ray_data():
    """Ray Data's INFO lines (each execution's plan and timing) unless the user asked for INFO
    (``postemb -v``), and its notice that its progress bars are off (the backfill shows its own),
    kept from the console; its warnings and errors still show."""
    data = logging.getLogger("ray.data")
    before = data.level
    if not log.isEnabledFor(logging.INFO):
        data.setLevel(logging.WARNING)
    try:
        with dropped("ray.data._internal.progress", lambda r: r.getMessage().startswith("Progress bars disabled")):
            yield
    finally:
        data.setLevel(before)


def rows(ds):
    """``ds.iter_rows()`` (which runs the dataset) with Ray Data quiet (:func:`quiet_ray_data`)."""
    with quiet_ray_data():
        yield from ds.iter_rows()
