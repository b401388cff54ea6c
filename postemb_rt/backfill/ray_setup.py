"""Starting Ray for a backfill, and keeping Ray's expected chatter from the user (its warnings
and errors still show; ``postemb -v`` shows its INFO lines too).

Left alone: a line from Ray's C++ core, "Actor ... has constructor arguments in the object store
and max_restarts > 0", which Ray Data logs for every actor pool (the line links ray-project/ray#53727; its own
bookkeeping, not our arguments); it cannot be filtered from Python.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from contextlib import contextmanager

from ..cpu import usable_cpus
from ..errors import ValidationError
from ..logs import dropped

log = logging.getLogger("postemb_rt.backfill")
REACH_SECONDS = 5.0  # a cluster's address must accept a connection this soon (Ray itself retries for minutes)


def ray_init(ray_address: str | None, num_cpus: int | None) -> bool:
    """Connect (or start a local Ray). Returns True if this call started it.

    ``ray_address`` None: the cluster in ``$RAY_ADDRESS`` when set (Ray's own convention: a Ray job
    sets it), else a new Ray on this machine with ``num_cpus`` (never a cluster that ``ray start``
    left running here: ``--ray-address auto`` joins that). A HOST:PORT that accepts no connection
    within ``REACH_SECONDS`` is refused naming where the address came from, as is 'auto' with no
    cluster to find; Ray would retry an unreachable address for minutes."""
    import ray

    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    ours = signal.getsignal(signal.SIGTERM) is _interrupt  # sigterm_interrupts() is in force
    source, address = check_address(ray_address)
    if address and not ray_address:
        log.warning("joining the Ray cluster at %s ($RAY_ADDRESS; unset it to start Ray on this machine)", address)
    # Ray's notice that token authentication is on (its default when RAY_AUTH_MODE is unset) is not
    # the user's business in a backfill; a notice that it is off, or any other warning, still shows
    with dropped("ray._private.authentication.authentication_token_setup",
                 lambda r: r.getMessage().startswith("Token authentication is enabled for this Ray cluster")):
        try:
            if address:
                ray.init(address=address, **kwargs)
            else:  # "local": not $RAY_ADDRESS, nor a cluster `ray start` left here
                ray.init(address="local", num_cpus=num_cpus or usable_cpus(), **kwargs)  # a CPU mask or quota
        except ConnectionError as exc:  # 'auto' with no cluster; Ray's message names its own --address flag
            raise ValidationError(f"`{source}` {address!r}: no Ray cluster found ({str(exc).splitlines()[0]}). Fix: "
                                  f"start one (`ray start --head`), pass its HOST:PORT, or "
                                  f"{_without(source)} to start Ray on this machine.") from None
        finally:
            if ours:  # ray.init took SIGTERM: take it back (see sigterm_interrupts)
                signal.signal(signal.SIGTERM, _interrupt)
    return True


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


def sigterm_interrupts():
    """Make SIGTERM (a scheduler's stop, ``kill``) end the run as Ctrl-C does, a KeyboardInterrupt in
    the main thread: finished splits are kept, the command says how to resume. Returns the function
    that puts the previous handler back. ``ray.init`` installs Ray's own handlers: ``sys.exit(15)``, which
    the command does not take for an interruption, and abseil's failure handler in its C++ core, which
    prints a stack trace as for a crash and arms a 3 s abort timer (ray-project/ray#64830);
    :func:`ray_init` takes the signal back from them while this is in force. Off the main thread (no
    signal handlers there): nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGTERM, _interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return restore


def check_address(ray_address: str | None) -> tuple[str, str | None]:
    """(where the address comes from, the address: ``ray_address``, else $RAY_ADDRESS, else None),
    refused when it is a HOST:PORT that accepts no connection within REACH_SECONDS."""
    source, address = ("--ray-address", ray_address) if ray_address else ("$RAY_ADDRESS", os.environ.get("RAY_ADDRESS"))
    if address:
        _check_reachable(address, source)
    return source, address or None


def check_actor_size(threads_per_worker: int, address: str | None) -> None:
    """Refuse, before any work, model actors larger than the Ray this run starts on this machine (no
    ``address``, none running in this process): each asks Ray for ``threads_per_worker`` CPUs, and with
    fewer, none could start and the run would wait for resources that never come (Ray Data gives up after
    30 minutes). A cluster is not checked: an autoscaler may add nodes large enough."""
    import ray

    if address or ray.is_initialized():
        return
    cpus = usable_cpus()
    if threads_per_worker > cpus:
        raise ValidationError(f"`threads_per_worker` {threads_per_worker}: each model actor asks Ray for "
                              f"{threads_per_worker} CPUs, and the Ray this run starts on this machine has {cpus} (the "
                              "CPUs this process may use): no actor could start, and the run would wait until Ray Data "
                              f"gives up (30 minutes). Fix: {cpus} or fewer, or --ray-address of a cluster with nodes "
                              f"of {threads_per_worker} CPUs.")


def _without(source: str) -> str:
    return "omit --ray-address" if source == "--ray-address" else "unset RAY_ADDRESS"


def _check_reachable(address: str, source: str) -> None:
    """Refuse a HOST:PORT (or ray://HOST:PORT) that accepts no TCP connection within REACH_SECONDS."""
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():  # 'auto', or a form Ray parses itself
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_SECONDS).close()
    except OSError as exc:
        why = "no answer in %gs" % REACH_SECONDS if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ValidationError(f"`{source}` {address!r}: cannot reach a Ray cluster there ({why}). Fix: start it "
                              f"(`ray start --head --port {port}`), correct the address, or {_without(source)} to "
                              "start Ray on this machine.") from None


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
