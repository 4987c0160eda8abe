"""Migrations take an empty SQLite and an empty PostgreSQL database to head, and back."""

from __future__ import annotations

import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from shared.db import make_engine
from shared.migrate import current_revision, downgrade, upgrade
from shared.models import Base

HEAD = "0007"  # the newest revision in migrations/versions


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'impasto.db'}"
    return request.getfixturevalue("postgres_url")


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_gives_the_models_schema_and_downgrade_removes_it(database_url):
    upgrade(database_url)
    assert current_revision(database_url) == HEAD
    assert {"jobs", "snapshots", "alembic_version"} <= tables(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], "the migrations and shared/models.py disagree"

    downgrade(database_url, "base")
    assert current_revision(database_url) is None
    assert tables(database_url) <= {"alembic_version"}
    upgrade(database_url)  # and up again: downgrade left nothing behind
    assert current_revision(database_url) == HEAD


def test_impasto_db_upgrade_command(database_url, tmp_path):
    env = {"IMPASTO_DATABASE_URL": database_url, "IMPASTO_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    current = subprocess.run(
        [sys.executable, "-m", "shared.cli", "db", "current"], env=env, capture_output=True, text=True, timeout=120
    )
    assert current.stdout.strip() == HEAD


def test_unreachable_database_is_one_line(tmp_path):
    env = {"IMPASTO_DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1
    assert run.stderr.startswith("impasto db: error: cannot reach the database:")
    assert run.stderr.count("\n") == 1


def test_an_unknown_revision_is_one_line(tmp_path):
    env = {"IMPASTO_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "db", "downgrade", "nonsense"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("impasto db: error:") and "nonsense" in run.stderr and run.stderr.count("\n") == 1
