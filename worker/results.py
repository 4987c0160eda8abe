"""What a job leaves: its snapshots and its output, stored under the attempt's own keys, and
the row that records its end. A write the database refuses (the job is another attempt's)
removes the file it stored, so no row ever names a stale attempt's picture."""

from __future__ import annotations

import io
import logging
from typing import Any

from shared.jobs import JobError, add_snapshot
from shared.models import CANCELED, FAILED, SUCCEEDED
from shared.params import StyleParams
from shared.storage import job_key

from .lease import Lease

log = logging.getLogger("impasto.worker")


def attempt_folder(number: int) -> str:
    """Where an attempt's snapshots and output are stored, under the job's folder."""
    return f"attempt-{number}"


def png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def store_snapshot(runner, job_id: str, worker: str, number: int, event: Any, lease: Lease) -> None:
    """Store a snapshot under this attempt's key, then its row, guarded by the claim. A refused
    row means the lease is lost: the file is removed, and no resume can ever pick it (a resume
    reads the rows), even if the removal fails."""
    key = job_key(job_id, f"{attempt_folder(number)}/snapshots/{event.iteration:06d}.png")
    runner.storage.put(key, png(event.image), "image/png")
    if not runner.db(
        lambda session: add_snapshot(
            session, job_id, event.iteration, key, event.losses.as_dict(), worker=worker, attempt=number
        ),
        job_id,
    ):
        discard(runner, job_id, key)
        lease.lost = True


def discard(runner, job_id: str, key: str) -> None:
    """Remove a file a refused write left; one that stays is named by no row, so nothing reads
    it, and it goes with the job's folder."""
    try:
        runner.storage.delete(key)
    except Exception as err:  # storage's errors have no common base; the job is not ours anyway
        log.warning("job=%s event=discard-failed key=%s error=%r", job_id, key, str(err))


def store_result(runner, job_id, worker, number, params, result, cancel_requested: bool) -> str | None:
    """Store the output under this attempt's key and record how the job ended; None when
    the end is refused (the job is another attempt's)."""
    # Under this attempt's own key: a stale attempt's output can never replace a newer one's.
    output_key = job_key(job_id, f"{attempt_folder(number)}/output.png")
    runner.storage.put(output_key, png(result.image), "image/png")  # kept when stopped early too
    status, error = SUCCEEDED, None
    if result.canceled and cancel_requested:
        status = CANCELED
    elif result.canceled:
        status, error = FAILED, _timed_out(runner, result, params)
        log.warning("job=%s event=failed code=timeout iteration=%d", job_id, result.iterations)
    fields = {
        "iteration": result.iterations,
        "losses": result.losses.as_dict(),
        "output_key": output_key,
        "weights": result.weights,
        "weights_warning": result.weights_warning,
        "error": error,
    }
    if not runner.finish(job_id, worker, number, status, **fields):
        discard(runner, job_id, output_key)  # refused: no row names it
        return None
    return status


def _timed_out(runner, result: Any, params: StyleParams) -> JobError:
    return JobError(
        "timeout",
        f"the job ran past this service's time limit of {runner.settings.job_time_limit} s at iteration "
        f"{result.iterations} of {params.iterations}; the picture so far is kept. Submit it with fewer "
        f"iterations or a smaller size",
    )
