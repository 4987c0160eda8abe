"""Log lines as key=value pairs (logfmt), one event per line, the job id in every job's line.

Impasto's own messages are already pairs (`job=ID event=started worker=...`) and go out as
they are; a message from a library (Celery, kombu, gunicorn) becomes `msg="..."`. Each line
starts with the time, level, logger and process id, so lines from many workers on many
machines can be merged and searched (`grep job=0f3a...`).
"""

from __future__ import annotations

import logging
import re
import time

UNPROPAGATED = ("multiprocessing", "celery.task")

# A message that starts with key=value is one of ours.
_PAIRS = re.compile(r"^[a-z_][a-z0-9_.-]*=")


def quote(value: object) -> str:
    """A value as logfmt writes it: bare if it has no space, quote or '=', else quoted."""
    text = str(value)
    if text and not re.search(r'[\s"=\\]', text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        head = f"ts={when} level={record.levelname.lower()} logger={record.name} pid={record.process}"
        body = message if _PAIRS.match(message) and "\n" not in message else f"msg={quote(message)}"
        line = f"{head} {body}"
        if record.exc_info:
            line += f" exc={quote(self.formatException(record.exc_info))}"
        return line


def configure_logging(level: str = "INFO") -> None:
    """Every logger of this process writes key=value lines to standard error."""
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Loggers that do not pass their records up to the root: billiard's ("Process ... exited
    # with signal 15") and Celery's task logger. Celery gives each a handler of its own format
    # unless it has one already.
    for name in UNPROPAGATED:
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    logging.captureWarnings(True)  # Python's warnings (Celery's about running as root, say) too
