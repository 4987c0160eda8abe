"""Clips: checking and coding them (shared/video.py), optical flow and the temporal loss
(worker/engine/temporal.py), frames held together (worker/engine/video.py), and the command
line. Every clip is generated here with PyAV, a few frames of 64x48."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from shared.params import StyleParams
from shared.video import ClipError, encode_clip, is_clip, probe_clip, read_frames, sniff_container
from tests.conftest import make_style
from tests.helpers import SIZE, make_clip, panned


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


# --- shared/video.py ---


@pytest.mark.parametrize(
    "container, encoder, audio, codec",
    [("mp4", "libx264", "aac", "h264"), ("webm", "libvpx-vp9", "opus", "vp9"), ("webm", "libvpx", None, "vp8")],
)
def test_a_clip_is_checked_decoded_and_written_back_in_its_container_with_its_audio(container, encoder, audio, codec):
    data = make_clip(container, encoder=encoder, audio=audio is not None)
    assert sniff_container(data) == container and is_clip(data)
    info = probe_clip(data)
    assert (info.container, info.codec, info.size, info.frames, info.fps, info.audio) == (
        container,
        codec,
        SIZE,
        4,
        Fraction(12),
        audio,
    )
    frames = list(read_frames(data))
    assert len(frames) == 4 and all(f.size == SIZE and f.mode == "RGB" for f in frames)
    assert mean_difference(frames[1], panned(4)[1]) < 12  # lossy, but the same picture
    again = probe_clip(encode_clip(frames, info, audio_from=data))
    assert (again.container, again.codec, again.frames, again.fps, again.audio) == (
        container,
        codec,
        4,
        Fraction(12),
        audio,
    )


def test_an_animated_gif_is_a_clip_and_a_still_one_is_an_image():
    data = make_clip("gif")
    info = probe_clip(data)
    assert is_clip(data) and (info.container, info.frames, info.audio) == ("gif", 4, None)
    assert probe_clip(encode_clip(list(read_frames(data)), info)).frames == 4
    still = io.BytesIO()
    panned(1)[0].save(still, "GIF")
    assert not is_clip(still.getvalue())
    with pytest.raises(ClipError, match="still GIF"):
        probe_clip(still.getvalue())


def test_odd_sides_lose_a_row_for_the_video_codecs():
    frames = [image.resize((63, 47)) for image in panned(2)]
    info = probe_clip(make_clip("mp4", [f.resize((64, 48)) for f in frames]))
    assert probe_clip(encode_clip(frames, info)).size == (62, 46)


def _damaged(data: bytes) -> bytes:
    """The clip with its second half overwritten by noise (the header intact)."""
    noise = np.random.default_rng(3).integers(0, 256, len(data) // 2, dtype=np.uint8).tobytes()
    return data[: len(data) - len(noise)] + noise


@pytest.mark.parametrize(
    "data, limits, message",
    [
        (lambda: make_clip()[:300], {}, "damaged clip|truncated or corrupt|no frame"),
        (lambda: _damaged(make_clip("webm")), {}, "damaged clip|truncated or corrupt|no frame"),
        (lambda: make_clip(encoder="mpeg4"), {}, "with mpeg4 video; this service takes H264"),
        (lambda: b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64, {}, "damaged clip"),
        (lambda: b"not a clip at all", {}, "not a clip"),
        (lambda: make_clip(), {"max_frames": 3}, "more than 3 frames"),
        (lambda: make_clip(), {"max_pixels": 1000}, "over the limit of 1000"),
    ],
)
def test_a_clip_that_cannot_be_used_is_refused_with_a_reason(data, limits, message):
    with pytest.raises(ClipError, match=message):
        probe_clip(data(), **limits)


# --- worker/engine/temporal.py ---


def test_flow_warp_and_mask_follow_a_pan():
    from worker.engine.temporal import consistency_mask, optical_flow, warp

    before, now = (np.asarray(f) for f in panned(2, shift=2, size=(96, 72)))
    backward, forward = optical_flow(now, before), optical_flow(before, now)
    inner = (slice(8, -8), slice(8, -8))
    assert np.median(backward[inner][..., 0]) == pytest.approx(2, abs=0.3)
    assert np.median(forward[inner][..., 0]) == pytest.approx(-2, abs=0.3)
    warped = warp(before, backward)
    assert (
        np.abs(warped[inner].astype(float) - now[inner]).mean()
        < 0.5 * np.abs(before[inner].astype(float) - now[inner]).mean()
    )
    mask = consistency_mask(forward, backward)
    assert mask[:, -1].mean() < 0.5  # the column that came into view has no past
    assert mask[inner].mean() > 0.8


# --- worker/engine/video.py ---


def test_frames_held_to_the_warped_previous_output_flicker_less(random_weights):
    from worker.engine.video import FrameDone, FrameProgress, stylize_frames

    frames = panned(3, size=(48, 36))
    params = StyleParams(size=48, iterations=8, scales=1, weights="random")
    runs = {}
    for weight in (params.temporal_weight, 0.0):
        events = list(
            stylize_frames(
                frames,
                [make_style()],
                params.model_copy(update={"temporal_weight": weight}),
                device="cpu",
                weights=random_weights,
            )
        )
        done = [e for e in events if isinstance(e, FrameDone)]
        assert [e.frame for e in done] == [0, 1, 2]
        assert {e.frame for e in events if isinstance(e, FrameProgress)} == {0, 1, 2}
        runs[weight] = done
    held, alone = runs[params.temporal_weight], runs[0.0]
    assert held[0].coverage is None and all(0.5 < e.coverage <= 1 for e in held[1:])
    assert all(e.coverage is None for e in alone)

    def flicker(done):
        arrays = [np.asarray(e.image, np.float32) for e in done]
        return np.mean([np.abs(b[:, :-2] - a[:, 2:]).mean() for a, b in zip(arrays, arrays[1:])])

    assert flicker(held) < 0.5 * flicker(alone)


def test_a_stop_ends_the_clip_without_the_unfinished_frame(random_weights):
    from worker.engine.video import FrameDone, stylize_frames

    calls = iter(range(1000))
    params = StyleParams(size=48, iterations=4, scales=1, weights="random")
    events = list(
        stylize_frames(
            panned(3, size=(48, 36)),
            [make_style()],
            params,
            device="cpu",
            weights=random_weights,
            should_stop=lambda: next(calls) >= 5,  # frame 0 polls 4 times, frame 1 twice: at its second
        )
    )
    assert [e.frame for e in events if isinstance(e, FrameDone)] == [0]


# --- the command line ---


def impasto(*args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_the_command_line_stylizes_a_clip_into_its_container_and_a_frames_folder(tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make_clip("mp4", panned(3), audio=True))
    make_style().save(tmp_path / "style.png")
    out, frames = tmp_path / "out.mp4", tmp_path / "frames"
    run = impasto(
        "stylize", clip, tmp_path / "style.png", "-o", out, "--frames-dir", frames, "--size", 48,
        "--iterations", 4, "--scales", 1, "--weights", "random", "--device", "cpu", "--json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    info = probe_clip(out)
    assert (info.container, info.frames, info.fps, info.audio, info.size) == ("mp4", 3, Fraction(12), "aac", (48, 36))
    written = sorted(p.name for p in frames.iterdir())
    assert written == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    with Image.open(frames / written[0]) as first:
        assert first.size == (48, 36)
    summary = json.loads(run.stdout)
    assert summary["frames"] == 3 and summary["clip"]["frames"] == 3 and not summary["canceled"]


@pytest.mark.parametrize(
    "make, output, message",
    [
        (lambda: make_clip()[:300], "out.mp4", "damaged clip|truncated or corrupt|no frame"),
        (lambda: make_clip(encoder="mpeg4"), "out.mp4", "this service takes H264"),
        (lambda: make_clip(), "out.webm", "name the output \\*.mp4"),
    ],
)
def test_the_command_line_refuses_a_bad_clip_with_exit_2(tmp_path, make, output, message):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(make())
    make_style().save(tmp_path / "style.png")
    run = impasto("stylize", clip, tmp_path / "style.png", "-o", tmp_path / output, "--weights", "random")
    assert run.returncode == 2, run.stderr
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert __import__("re").search(message, run.stderr), run.stderr
