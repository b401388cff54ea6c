"""Logging: the commands' one stderr handler (text or JSON lines, ``configure_logging``; the HTTP
server's uvicorn loggers and workers too, ``log_config``), and the one helper for keeping other
libraries' (and our own checks') expected log lines away from the user (``dropped``)."""
from __future__ import annotations

import json
import logging
import logging.config
from contextlib import contextmanager
from typing import Callable, Iterator


class _Drop(logging.Filter):
    def __init__(self, drop: Callable[[logging.LogRecord], bool]):
        super().__init__()
        self.drop = drop

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.drop(record)


@contextmanager
def dropped(logger: logging.Logger | str, drop: Callable[[logging.LogRecord], bool]) -> Iterator[None]:
    """Inside the block, the records logged on ``logger`` itself (a logger's filters do not see
    its children's records) for which ``drop(record)`` is true are dropped; the rest pass."""
    logger = logging.getLogger(logger) if isinstance(logger, str) else logger
    f = _Drop(drop)
    logger.addFilter(f)
    try:
        yield
    finally:
        logger.removeFilter(f)


TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per log line (``--log-format json``): time, level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def log_config(verbose: bool, log_format: str, access_log: bool | None = None) -> dict:
    """``logging.config.dictConfig``'s dict for one stderr handler, text or JSON (``log_format``), on the
    root logger: other libraries at WARNING, postemb_rt's INFO lines with ``verbose`` (onnxruntime's
    quantizer logs dozens of INFO lines). ``access_log`` not None: also uvicorn's loggers (the server; its
    ``log_config``, applied again in each ``--workers`` process), through that handler rather than
    uvicorn's own (plain text, access lines on stdout): its errors at WARNING (INFO with ``verbose``),
    one line per request with ``access_log``, which ``verbose`` does not need."""
    fmt = {"()": f"{__name__}.JsonFormatter"} if log_format == "json" else {"format": TEXT_FORMAT}
    loggers = {"postemb_rt": {"level": "INFO" if verbose else "NOTSET"}}
    if access_log is not None:
        loggers.update({"uvicorn": {"level": "INFO" if verbose else "WARNING"},
                        "uvicorn.access": {"level": "INFO" if access_log else "WARNING"}})
    return {"version": 1, "disable_existing_loggers": False, "formatters": {"line": fmt},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "line",
                                    "stream": "ext://sys.stderr"}},
            "root": {"level": "WARNING", "handlers": ["stderr"]}, "loggers": loggers}


def configure_logging(verbose: bool, log_format: str) -> None:
    """Every log line through one stderr handler (``log_config``), Python's warnings included (a
    library's ``warnings.warn``, which would print its own lines)."""
    logging.config.dictConfig(log_config(verbose, log_format))
    logging.captureWarnings(True)
