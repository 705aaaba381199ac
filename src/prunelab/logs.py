"""Logging helpers: what reaches the console and what only a log file holds."""

from __future__ import annotations

import logging
import sys
import warnings
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


class SayOnce(logging.Handler):
    """Show each distinct message once on the console, in words (a warning's message, without its source line),
    above any progress bar; the records themselves go on to the run's log file."""

    def __init__(self, where: str = ""):
        super().__init__(logging.WARNING)
        self.where, self.said = where, set()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.name == "py.warnings":  # "path:line: Category: message\n  source line": the message alone
            text = text.strip().splitlines()[0].split(": ", 2)[-1] if ": " in text else text.strip()
        if text in self.said:
            return
        self.said.add(text)
        line = f"note: {text}" + (f" ({self.where})" if self.where else "")
        try:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        except ImportError:
            print(line, file=sys.stderr)


@contextmanager
def to_file(path, console: SayOnce | None = None):
    """Inside the block, prunelab's and transformers' log records and Python's warnings go to the file `path` and
    not to the console, except the warnings, which `console` says once each."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("prunelab", "transformers", "py.warnings")]
    saved = [(logger, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.propagate = False  # not to the console's handlers
    if console is not None:
        logging.getLogger("py.warnings").addHandler(console)
    logging.captureWarnings(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # every run's log gets its warnings; `console` says each once
            yield
    finally:
        logging.captureWarnings(False)
        if console is not None:
            logging.getLogger("py.warnings").removeHandler(console)
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate
        handler.close()
