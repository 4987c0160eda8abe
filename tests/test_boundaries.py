"""The package boundaries of the architecture, checked on what each import really loads:
the web tier runs without torch, shared names no tier, the engine knows no service."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECKS = {
    "web": (
        ["web.app", "web.api", "web.pages", "web.serve", "web.submit", "web.openapi", "web.access", "web.sweeps"],
        ["torch", "worker"],
    ),
    "shared": (
        [
            "shared.settings",
            "shared.models",
            "shared.db",
            "shared.jobs",
            "shared.storage",
            "shared.tasks",
            "shared.migrate",
            "shared.launcher",
            "shared.params",
            "shared.images",
            "shared.cli",
            "shared.flags",
            "shared.deletion",
            "shared.keys",
            "shared.sweeps",
            "shared.sheet",
            "shared.client",
            "shared.video",
            "shared.clips",
        ],
        ["flask", "torch", "web", "worker"],
    ),
    "worker.engine": (
        ["worker.engine", "worker.engine.video", "worker.engine.temporal"],
        ["flask", "sqlalchemy", "celery", "shared", "web"],
    ),
    "worker": (
        [
            "worker.runner",
            "worker.service",
            "worker.cli",
            "worker.sweep_cli",
            "worker.reconcile",
            "worker.retention",
            "worker.clips",
        ],
        ["flask", "web"],
    ),
}


@pytest.mark.parametrize("package", sorted(CHECKS))
def test_imports_stay_inside_the_boundary(package):
    modules, forbidden = CHECKS[package]
    script = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & {set(forbidden)!r})\n"
        + "print(' '.join(bad))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "", f"{package} imported {run.stdout.strip()}"
