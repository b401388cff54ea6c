"""Keeping other libraries' (and our own checks') expected log lines away from the user: the one
helper for dropping log records inside a block."""
from __future__ import annotations

import logging
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
