"""Retention: finished jobs past the retention period go with every file they have; queued and
running jobs stay however old; cleaners racing each other each delete a job once; files no
job owns are swept once they are old. On SQLite and PostgreSQL, a local folder and S3 (moto)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_engine, session_factory
from shared.deletion import delete_job
from shared.jobs import create_job, recent_jobs
from shared.migrate import upgrade
from shared.models import CANCELED, FAILED, QUEUED, RUNNING, SUCCEEDED, Job, Snapshot, Sweep, utcnow
from shared.storage import LocalStorage, Storage, StorageError, job_key, open_storage
from worker.retention import ABANDONED_DELETE_AGE, main, purge_expired, purge_orphans

DAY = 24 * 3600
WEEK = 7 * DAY


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request, tmp_path):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else f"sqlite:///{tmp_path}/db"
    upgrade(url)
    engine = make_engine(url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def s3_storage(s3, s3_server):  # noqa: F811
    """The bucket of tests.test_storage's fixture, under a prefix of this test's own."""
    return open_storage(f"s3://impasto/{uuid.uuid4().hex}", s3_endpoint_url=s3_server)


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    return LocalStorage(tmp_path / "storage") if request.param == "local" else request.getfixturevalue("s3_storage")


def make_job(
    sessions: sessionmaker[Session],
    storage: Storage,
    status: str,
    *,
    age: float,
    snapshots: int = 2,
    output: bool = True,
) -> str:
    """A job with its files in storage, created `age` seconds ago and, if final, finished then."""
    inputs = {
        "content": {"key": "", "name": "photo.jpg"},
        "styles": [{"key": "", "name": "painting.jpg"}],
        "style_preset": None,
    }
    with sessions() as session:
        job_id = create_job(session, params={"iterations": 10}, inputs=inputs).id
        then = utcnow() - timedelta(seconds=age)
        keys = {"content": job_key(job_id, "inputs/0-content.jpg"), "style": job_key(job_id, "inputs/1-style.jpg")}
        inputs["content"]["key"], inputs["styles"][0]["key"] = keys["content"], keys["style"]
        output_key = job_key(job_id, "output.png") if output else None
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=status,
                inputs=inputs,
                created_at=then,
                started_at=then if status != QUEUED else None,
                heartbeat_at=then if status == RUNNING else None,
                output_key=output_key,
                finished_at=then if status in (SUCCEEDED, FAILED, CANCELED) else None,
            )
        )
        for iteration in range(1, snapshots + 1):
            key = job_key(job_id, f"snapshots/{iteration:06d}.png")
            session.add(Snapshot(job_id=job_id, iteration=iteration, key=key, created_at=then))
            storage.put(key, b"png", "image/png")
        session.commit()
    for key in [*keys.values(), *([output_key] if output_key else [])]:
        storage.put(key, b"image", "image/png")
    return job_id


def files_of(storage: Storage, job_id: str) -> list[str]:
    return sorted(item.key for item in storage.list_objects(f"jobs/{job_id}"))


def rows(sessions: sessionmaker[Session], job_id: str) -> tuple[int, int]:
    """(jobs, snapshots) rows for this id."""
    with sessions() as session:
        return (
            session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id)),
            session.scalar(select(func.count()).select_from(Snapshot).where(Snapshot.job_id == job_id)),
        )


def test_old_finished_jobs_go_with_their_files_and_others_stay(sessions, storage):
    old = {status: make_job(sessions, storage, status, age=10 * DAY) for status in (SUCCEEDED, FAILED, CANCELED)}
    # A snapshot written by a worker that lost the job, with no row: it goes with the job's folder.
    storage.put(job_key(old[FAILED], "snapshots/000099.png"), b"png", "image/png")
    kept = {
        "fresh": make_job(sessions, storage, SUCCEEDED, age=3600),
        "running": make_job(sessions, storage, RUNNING, age=30 * DAY),
        "queued": make_job(sessions, storage, QUEUED, age=30 * DAY, snapshots=0, output=False),
    }
    files_before = {name: files_of(storage, job_id) for name, job_id in kept.items()}
    assert len(files_of(storage, old[SUCCEEDED])) == 5 and len(files_before["queued"]) == 2

    assert purge_expired(sessions, storage, WEEK, batch=2) == 3

    for job_id in old.values():
        assert rows(sessions, job_id) == (0, 0)
        assert files_of(storage, job_id) == []
    for name, job_id in kept.items():
        assert rows(sessions, job_id)[0] == 1, name
        assert files_of(storage, job_id) == files_before[name], name
    assert purge_expired(sessions, storage, WEEK) == 0


def test_retention_zero_keeps_every_job(sessions, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    job_id = make_job(sessions, storage, SUCCEEDED, age=1000 * DAY)
    assert purge_expired(sessions, storage, 0) == 0
    assert rows(sessions, job_id) == (1, 2) and len(files_of(storage, job_id)) == 5


def test_delete_job_deletes_only_a_finished_job(sessions, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    running = make_job(sessions, storage, RUNNING, age=60)
    queued = make_job(sessions, storage, QUEUED, age=60, snapshots=0, output=False)
    done = make_job(sessions, storage, CANCELED, age=60)
    for job_id in (running, queued, "no-such-job"):
        with sessions() as session:
            assert delete_job(session, storage, job_id) is False
    assert rows(sessions, running) == (1, 2) and len(files_of(storage, running)) == 5
    assert rows(sessions, queued) == (1, 0) and len(files_of(storage, queued)) == 2
    with sessions() as session:
        assert delete_job(session, storage, done) is True
        assert delete_job(session, storage, done) is False  # the same session goes on working
    assert rows(sessions, done) == (0, 0) and files_of(storage, done) == []


class PausedStorage(LocalStorage):
    """Its first delete waits until the test lets it go: the moment a deleter is removing files."""

    def __init__(self, root):
        super().__init__(root)
        self.deleting, self.go_on = threading.Event(), threading.Event()

    def delete(self, key: str) -> None:
        if not self.deleting.is_set():
            self.deleting.set()
            assert self.go_on.wait(30)
        super().delete(key)


def test_no_transaction_or_row_lock_is_held_while_files_are_removed(sessions, tmp_path):
    storage = PausedStorage(tmp_path / "storage")
    job_id = make_job(sessions, storage, SUCCEEDED, age=60)
    owner_engine = sessions.kw["bind"]
    deleter = threading.Thread(target=lambda: _delete_in_own_session(sessions, storage, job_id))
    deleter.start()
    try:
        assert storage.deleting.wait(30)
        with sessions() as session:
            # The mark is committed before any file goes: every reader already sees it as deleted.
            assert session.scalar(select(Job.deleted_at).where(Job.id == job_id)) is not None
            if owner_engine.dialect.name == "postgresql":
                # No row lock: another transaction takes the row at once (NOWAIT would raise).
                session.execute(select(Job.id).where(Job.id == job_id).with_for_update(nowait=True)).one()
                session.rollback()
                # And no transaction left open by the deleter while it talks to the storage.
                idle = session.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()"
                    )
                )
                assert idle == 0
            else:  # SQLite: the database is not locked for writing by the deleter
                session.execute(update(Job).where(Job.id == job_id).values(weights="x"))
                session.commit()
    finally:
        storage.go_on.set()
        deleter.join(30)
    assert rows(sessions, job_id) == (0, 0) and files_of(storage, job_id) == []


def _delete_in_own_session(sessions, storage, job_id) -> None:
    with sessions() as session:
        assert delete_job(session, storage, job_id) is True


class CrashingStorage(LocalStorage):
    """Fails after its first delete, as a deleter that crashed (or lost the storage) half way."""

    def __init__(self, root):
        super().__init__(root)
        self.deletes = 0

    def delete(self, key: str) -> None:
        self.deletes += 1
        if self.deletes > 1:
            raise StorageError("the storage went away")
        super().delete(key)


def test_a_delete_stopped_half_way_is_hidden_and_the_retention_pass_finishes_it(sessions, tmp_path):
    storage = CrashingStorage(tmp_path / "storage")
    job_id = make_job(sessions, storage, FAILED, age=60)
    owner = "key:crash"
    with sessions() as session:
        session.execute(update(Job).where(Job.id == job_id).values(owner=owner))
        session.commit()
    with sessions() as session, pytest.raises(StorageError):
        delete_job(session, storage, job_id)
    assert rows(sessions, job_id) == (1, 2) and len(files_of(storage, job_id)) == 4  # one file gone
    with sessions() as session:
        # Marked deleted: never listed, and a second DELETE finds nothing to take.
        assert recent_jobs(session, owner=owner, limit=10) == ([], 0)
        assert session.get(Job, job_id).deleted_at is not None
        assert delete_job(session, storage, job_id) is False
    healthy = LocalStorage(tmp_path / "storage")
    # A delete in progress is left to its deleter; one abandoned for long, the pass finishes,
    # even with retention off (0: keep finished jobs forever).
    assert purge_expired(sessions, healthy, 0) == 0 and rows(sessions, job_id) == (1, 2)
    later = utcnow() + ABANDONED_DELETE_AGE + timedelta(seconds=1)
    assert purge_expired(sessions, healthy, 0, now=later) == 1
    assert rows(sessions, job_id) == (0, 0) and files_of(healthy, job_id) == []


class SlowStorage(LocalStorage):
    """Deletes take a moment, as over a network, so that racing cleaners overlap."""

    def delete(self, key: str) -> None:
        time.sleep(0.002)
        super().delete(key)


def race(*cleaners: Callable[[], int]) -> list[int]:
    """Run the cleaners in threads, all started at once; their results, or their errors raised."""
    results: list[int | BaseException] = [0] * len(cleaners)
    start = threading.Barrier(len(cleaners))

    def run(index: int) -> None:
        start.wait()
        try:
            results[index] = cleaners[index]()
        except BaseException as err:  # handed to the test below
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cleaners))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def test_two_cleaners_at_once_delete_each_job_once(sessions, tmp_path):
    storage = SlowStorage(tmp_path / "storage")
    jobs = [make_job(sessions, storage, SUCCEEDED, age=10 * DAY, snapshots=1) for _ in range(12)]
    keep = make_job(sessions, storage, RUNNING, age=10 * DAY, snapshots=1)
    first, second = race(
        lambda: purge_expired(sessions, storage, WEEK, batch=5), lambda: purge_expired(sessions, storage, WEEK, batch=5)
    )
    assert first + second == len(jobs)
    assert all(rows(sessions, job_id) == (0, 0) and files_of(storage, job_id) == [] for job_id in jobs)
    assert rows(sessions, keep) == (1, 1)


def test_a_purge_and_deletes_of_the_same_jobs_delete_each_once(sessions, tmp_path):
    storage = SlowStorage(tmp_path / "storage")
    jobs = [make_job(sessions, storage, FAILED, age=10 * DAY, snapshots=1) for _ in range(8)]

    def delete_each() -> int:
        deleted = 0
        for job_id in jobs:
            with sessions() as session:
                deleted += delete_job(session, storage, job_id)
        return deleted

    purged, deleted = race(lambda: purge_expired(sessions, storage, WEEK, batch=3), delete_each)
    assert purged + deleted == len(jobs)
    assert all(rows(sessions, job_id) == (0, 0) for job_id in jobs)


def test_files_no_job_owns_are_swept_once_old(sessions, storage):
    owned = [make_job(sessions, storage, QUEUED, age=60, snapshots=0, output=False) for _ in range(2)]
    # A submission refused by the database: its inputs are stored, its row never was.
    for orphan in ("orphan-a", "orphan-b"):
        storage.put(job_key(orphan, "inputs/0-content.jpg"), b"image", "image/jpeg")
    assert purge_orphans(sessions, storage) == 0  # too recent: it may still be committing
    assert purge_orphans(sessions, storage, now=utcnow() + timedelta(days=2)) == 2
    assert files_of(storage, "orphan-a") == files_of(storage, "orphan-b") == []
    assert all(len(files_of(storage, job_id)) == 2 for job_id in owned)


def test_the_newest_file_of_a_folder_says_how_old_it_is(sessions, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    make_job(sessions, storage, QUEUED, age=60, snapshots=0, output=False)
    two_days_ago = time.time() - 2 * DAY
    for name, touched in (("old", [two_days_ago, two_days_ago]), ("mixed", [two_days_ago, time.time()])):
        for index, mtime in enumerate(touched):
            key = job_key(f"orphan-{name}", f"inputs/{index}-content.jpg")
            storage.put(key, b"image", "image/jpeg")
            os.utime(storage.path(key), (mtime, mtime))
    assert purge_orphans(sessions, storage) == 1
    assert files_of(storage, "orphan-old") == [] and len(files_of(storage, "orphan-mixed")) == 2


def test_a_storage_this_database_does_not_own_is_left_alone(sessions, tmp_path, caplog):
    """Mostly folders without rows: the cleaner was given the wrong (or an empty) database."""
    storage = LocalStorage(tmp_path / "storage")
    owned = make_job(sessions, storage, SUCCEEDED, age=60)
    for index in range(2):
        storage.put(job_key(f"other-{index}", "output.png"), b"png", "image/png")
    assert purge_orphans(sessions, storage, now=utcnow() + timedelta(days=2)) == 0
    assert "event=orphans-kept" in caplog.text
    assert len(files_of(storage, "other-0")) == 1 and len(files_of(storage, owned)) == 5


def test_s3_lists_every_page_under_its_prefix(s3_storage, monkeypatch):
    s3 = s3_storage
    for index in range(5):
        s3.put(job_key("a", f"snapshots/{index}.png"), b"png", "image/png")
    s3.put(job_key("b", "output.png"), b"png", "image/png")
    pages = []
    list_page = s3.client.list_objects_v2

    def small_pages(**request):
        pages.append(request)
        return list_page(**request, MaxKeys=2)

    monkeypatch.setattr(s3.client, "list_objects_v2", small_pages)
    listed = list(s3.list_objects("jobs/a"))
    assert sorted(item.key for item in listed) == [f"jobs/a/snapshots/{i}.png" for i in range(5)]
    assert len(pages) == 3 and all(item.modified.tzinfo is not None for item in listed)


def test_the_cleanup_command_runs_one_pass_from_the_settings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMPASTO_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IMPASTO_RETENTION", str(DAY))
    url = f"sqlite:///{tmp_path}/data/impasto.db"
    upgrade(url)
    engine = make_engine(url)
    sessions = session_factory(engine)
    storage = LocalStorage(tmp_path / "data" / "storage")
    old, fresh = make_job(sessions, storage, SUCCEEDED, age=2 * DAY), make_job(sessions, storage, SUCCEEDED, age=60)
    assert main([]) == 0
    assert "deleted 1 finished jobs" in capsys.readouterr().out
    assert rows(sessions, old) == (0, 0) and rows(sessions, fresh) == (1, 2)
    engine.dispose()


def test_a_sweep_goes_once_its_last_cell_has_gone(sessions, tmp_path):
    storage = LocalStorage(tmp_path / "storage")
    old, young = make_job(sessions, storage, SUCCEEDED, age=2 * WEEK), make_job(sessions, storage, SUCCEEDED, age=DAY)
    with sessions() as session:
        then = utcnow() - timedelta(seconds=2 * WEEK)
        session.add_all([Sweep(id="both", axes=[], created_at=then), Sweep(id="old-only", axes=[], created_at=then)])
        session.flush()
        session.execute(update(Job).where(Job.id == old).values(sweep_id="old-only", cell=0))
        session.execute(update(Job).where(Job.id == young).values(sweep_id="both", cell=1))
        session.commit()
    assert purge_expired(sessions, storage, WEEK) == 1
    with sessions() as session:
        assert session.scalars(select(Sweep.id)).all() == ["both"]  # its young cell is still there
