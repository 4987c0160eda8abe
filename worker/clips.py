"""One segment of a clip, from its row to stored frames (shared/clips.py says how a clip is cut).

The runner claims a segment like any job and hands it here: its frames are painted by
worker/engine/video.py, each stored and counted as soon as it is made, so the next attempt
after a lost worker goes on from the last stored frame. The segment that stores the clip's
last missing frame assembles the clip: faded segment boundaries, the frames encoded in the
input's container and frame rate, the input's audio copied in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PIL import Image

from shared.clips import (
    Segment,
    blend_key,
    cancel_requested,
    clip_complete,
    finish_clip,
    frame_key,
    lead_key,
    output_key,
    record_frame,
    segments_of,
    start_clip,
)
from shared.images import ImageError, decode_image
from shared.models import CANCELED, FAILED, QUEUED, SUCCEEDED
from shared.params import StyleParams
from shared.storage import MissingObject
from shared.video import ClipError, ClipInfo, encode_clip, read_frames

if TYPE_CHECKING:
    from worker.runner import JobRunner

log = logging.getLogger("impasto.worker")

# How often a running segment reads its cancel flags between frames' writes.
CANCEL_POLL_S = 1.0


class _CancelPoll:
    """Whether the segment or its clip was canceled, read from the database at most every CANCEL_POLL_S."""

    def __init__(self, runner: JobRunner, segment_id: str, clip_id: str):
        self.runner, self.segment_id, self.clip_id = runner, segment_id, clip_id
        self.requested = False
        self._last = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self.requested and now - self._last >= CANCEL_POLL_S:
            self._last = now
            with self.runner.sessions() as session:
                self.requested = cancel_requested(session, self.segment_id, self.clip_id)
        return self.requested


def run_segment(
    runner: JobRunner,
    job_id: str,
    worker: str,
    number: int,
    params: StyleParams,
    inputs: dict[str, Any],
    clip_id: str,
    should_abort: Callable[[], bool],
    lease: Any,
    deadline: float,
    done: int,
) -> str | None:
    """Paint the segment's frames from frame `done` of its run on; its final status, or None
    when the lease was lost."""
    from worker.failures import JobFailed
    from worker.results import png

    segment = Segment.from_dict(inputs["segment"])
    info = ClipInfo.from_dict(inputs["clip"])
    runner.db(lambda session: start_clip(session, clip_id), job_id)
    clip = _clip_bytes(runner, inputs)
    styles = [runner.image(style) for style in inputs["styles"]]
    previous = _previous(runner, clip, clip_id, segment, done) if done else None
    if done:
        log.info("job=%s event=resumed frame=%d", job_id, segment.start + done)
    if done < segment.count:
        from worker.engine import EngineError, WeightsError, resolve_device
        from worker.engine.video import FrameDone, stylize_frames

        try:
            device = resolve_device(runner.device)
            weights = runner.weights(params.weights)
        except (WeightsError, EngineError) as err:
            raise JobFailed("bad_parameters", str(err)) from None
        canceled = _CancelPoll(runner, job_id, clip_id)
        timed_out = lambda: time.monotonic() > deadline  # noqa: E731
        frames = read_frames(clip, first=segment.start + done, last=segment.last)
        try:
            for event in stylize_frames(
                frames,
                styles,
                params,
                start=segment.start + done,
                previous=previous,
                device=device,
                weights=weights,
                targets_cache=runner.targets_cache(),
                should_stop=lambda: canceled() or lease.lost or should_abort() or timed_out(),
            ):
                if not isinstance(event, FrameDone):
                    continue
                own = event.frame >= segment.first
                key = (frame_key if own else lead_key)(clip_id, event.frame)
                runner.storage.put(key, png(event.image), "image/png")
                flag = runner.db(
                    lambda session, event=event, key=key, own=own: record_frame(
                        session, job_id, worker, number, event.frame - segment.start,
                        clip_id=clip_id, frame=event.frame, key=key if own else None,
                    ),
                    job_id,
                )  # fmt: skip
                if flag is None:
                    lease.lost = True
                    break
                canceled.requested = canceled.requested or flag
                done += 1
        except EngineError as err:
            raise JobFailed("bad_parameters", str(err)) from None
        except ClipError as err:
            raise JobFailed("bad_input", str(err)) from None
        if lease.lost:
            return runner.lease_lost(job_id, worker, number, "run")
        if done < segment.count:  # stopped before the segment's last frame
            if canceled.requested:
                return _end(runner, job_id, worker, number, CANCELED, clip_id)
            if should_abort():
                runner.hand_back(job_id, worker, number)
                return QUEUED
            return _end(runner, job_id, worker, number, FAILED, clip_id, timeout=runner.settings.job_time_limit)
    if runner.db(lambda session: clip_complete(session, clip_id), job_id):
        _assemble(runner, clip_id, clip, info, job_id)
    return _end(runner, job_id, worker, number, SUCCEEDED, clip_id)


def _end(
    runner: JobRunner, job_id: str, worker: str, number: int, status: str, clip_id: str, timeout: int | None = None
) -> str | None:
    from shared.jobs import JobError

    error = None
    if timeout is not None:
        error = JobError(
            "timeout", f"the segment ran past this service's time limit of {timeout} s; its frames so far are kept"
        )
    if not runner.finish(job_id, worker, number, status, error=error):
        return None
    return status


def _clip_bytes(runner: JobRunner, inputs: dict[str, Any]) -> bytes:
    from worker.failures import JobFailed

    try:
        return runner.storage.get(inputs["content"]["key"])
    except MissingObject:
        raise JobFailed("input_missing", "the uploaded clip is no longer in storage; submit the job again") from None


def _stored(runner: JobRunner, key: str) -> Image.Image:
    return decode_image(runner.storage.get(key), name=f"the stored frame {key}")


def _previous(runner: JobRunner, clip: bytes, clip_id: str, segment: Segment, done: int):
    """(content, output) of the last frame an earlier attempt stored, to go on from; None: start afresh."""
    frame = segment.start + done - 1
    key = (frame_key if frame >= segment.first else lead_key)(clip_id, frame)
    try:
        output = _stored(runner, key)
    except (MissingObject, ImageError) as err:
        log.warning("job=%s event=resume-cold frame=%d reason=%r", clip_id, frame, str(err))
        return None
    content = next(read_frames(clip, first=frame, last=frame))
    return content, output


def _assemble(runner: JobRunner, clip_id: str, clip: bytes, info: ClipInfo, job_id: str) -> None:
    """Fade each lead-in into the frames it overlaps, encode the clip, store it, and end the clip
    succeeded (a second segment that also found the clip complete changes nothing)."""
    from worker.results import png

    segments = runner.db(
        lambda session: [Segment.from_dict(s.inputs["segment"]) for s in segments_of(session, clip_id)], job_id
    )  # read inside the session: the rows' attributes are not loaded after it closes
    blended: dict[int, str] = {}
    for segment in segments:
        for step, frame in enumerate(range(segment.start, segment.first), start=1):
            weight = step / (segment.lead_in + 1)  # the later segment's share grows frame by frame
            mixed = Image.blend(
                _stored(runner, frame_key(clip_id, frame)), _stored(runner, lead_key(clip_id, frame)), weight
            )
            blended[frame] = blend_key(clip_id, frame)
            runner.storage.put(blended[frame], png(mixed), "image/png")
    frames = (_stored(runner, blended.get(n) or frame_key(clip_id, n)) for n in range(info.frames))
    key = output_key(clip_id, info.extension)
    runner.storage.put(key, encode_clip(frames, info, audio_from=clip), info.content_type)
    if runner.db(lambda session: finish_clip(session, clip_id, key, blended), job_id):
        log.info("job=%s event=clip-assembled frames=%d segment=%s", clip_id, info.frames, job_id)
