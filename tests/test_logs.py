"""Worker logs are key=value lines, whoever writes them: Impasto, Celery, billiard, warnings."""

from __future__ import annotations

import subprocess
import sys

from shared.logs import quote
from tests.servers import ROOT

# Run in a process of its own: Celery's logging setup changes global state for good.
SCRIPT = """
import logging, warnings
from billiard import util
from celery.utils.log import get_task_logger
from shared.logs import configure_logging
from shared.settings import load_settings
from shared.tasks import make_celery

configure_logging()
# The worker's own Celery configuration; nothing connects to the broker.
app = make_celery(load_settings({"IMPASTO_BROKER_URL": "redis://127.0.0.1:1/0"}))
app.log.setup_logging_subsystem(loglevel="INFO")  # what `celery worker` does at its start

logging.getLogger("impasto.worker").info("job=abc event=started worker=vm:1")
logging.getLogger("kombu").warning("a library's message\\nover two lines")
util.get_logger().error("Process %r pid:%r exited with %r", "ForkPoolWorker-1", 42, "signal 15 (SIGTERM)")
get_task_logger("impasto.stylize").warning("from a task")
warnings.warn("something is deprecated")
"""


def test_every_line_is_key_value_pairs_after_celerys_own_logging_setup():
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith("ts=") and " level=" in line and " pid=" in line for line in lines), lines
    assert "logger=impasto.worker" in lines[0] and lines[0].endswith(" job=abc event=started worker=vm:1")
    assert lines[1].endswith(' msg="a library\'s message\\nover two lines"'), lines[1]
    assert "level=error logger=multiprocessing" in lines[2] and "exited with 'signal 15 (SIGTERM)'" in lines[2]
    assert "level=warning" in lines[3] and 'msg="from a task"' in lines[3]
    assert "logger=py.warnings" in lines[4] and "something is deprecated" in lines[4]


def test_values_are_quoted_only_when_they_must_be():
    assert quote("cuda:0") == "cuda:0"
    assert quote("two words") == '"two words"'
    assert quote('say "hi"') == '"say \\"hi\\""'
    assert quote("a=b") == '"a=b"'
    assert quote("") == '""'
