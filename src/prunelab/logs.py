"""Logging helpers: what reaches the console and what only a log file holds."""

from __future__ import annotations

import logging
from contextlib import contextmanager


class Held(logging.Handler):
    """Log records held back; ``pass_on()`` hands them to where they were going (``release`` is the lock's)."""

    def __init__(self, logger: logging.Logger):
        super().__init__()
        self.logger, self.records = logger, []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def pass_on(self) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = True
        for record in self.records:
            self.logger.handle(record)
        self.records = []


@contextmanager
def held_records(name: str):
    """Hold back the log records of logger `name` inside the block; those not released are dropped (e.g. a load
    report of transformers about a checkpoint that prunelab then refuses with a line of its own)."""
    logger_ = logging.getLogger(name)
    held, propagate = Held(logger_), logger_.propagate
    logger_.addHandler(held)
    logger_.propagate = False
    try:
        yield held
    finally:
        logger_.removeHandler(held)
        logger_.propagate = propagate
