"""Fixtures: offline weights, small generated images, and a shortcut to run the engine."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared.params import StyleParams

# Fixtures more than one module uses live in plugin modules, named here.
pytest_plugins = ["tests.fixtures"]


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No test touches the network (downloads off, an empty torch hub cache), and the command
    line runs on CPU even where there is a GPU."""
    monkeypatch.setenv("IMPASTO_OFFLINE", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("IMPASTO_VGG_WEIGHTS", raising=False)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same global random state, whatever ran before it (or in what
    order), so an unseeded torch.rand in a test draws the same numbers on every run."""
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def random_weights():
    from worker.engine import load_weights

    return load_weights("random")


def make_content(width: int = 64, height: int = 48) -> Image.Image:
    """A warm synthetic photo: an orange sky gradient, a dark red house with a window."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    rgb = np.stack([0.9 - 0.2 * y, 0.5 + 0.2 * x, 0.2 + 0.1 * y], axis=-1)
    rgb[height // 2 :, width // 4 : 3 * width // 4] = (0.55, 0.15, 0.1)
    rgb[height // 2 + 4 : height // 2 + 12, width // 2 - 4 : width // 2 + 4] = (0.95, 0.85, 0.4)
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def make_style(width: int = 64, height: int = 64, seed: int = 1) -> Image.Image:
    """A cool, busy texture: blue and green swirling stripes with noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / 8.0
    wave = np.sin(x + 2 * np.sin(y)) * 0.5 + 0.5
    rgb = np.stack([0.1 * wave, 0.3 + 0.4 * (1 - wave), 0.4 + 0.5 * wave], axis=-1)
    rgb += rng.normal(0, 0.05, rgb.shape)
    return Image.fromarray((rgb.clip(0, 1) * 255).astype(np.uint8), "RGB")


DATA = Path(__file__).parent / "data"
PHOTO = DATA / "tubingen.jpg"
PAINTING = DATA / "starry_night.jpg"


def load(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


@pytest.fixture
def photo():
    return load(PHOTO)


@pytest.fixture
def painting():
    return load(PAINTING)


@pytest.fixture
def content_image():
    return make_content()


@pytest.fixture
def style_image():
    return make_style()


@pytest.fixture
def run_engine(random_weights):
    """Run the engine to the end on CPU; return (events, result)."""
    from worker.engine import Result, stylize

    def run(content, styles, should_stop=None, resume=None, **overrides):
        settings = {"size": 48, "iterations": 6, "scales": 1, "weights": "random", **overrides}
        params = StyleParams(**settings)
        events = list(
            stylize(
                content, styles, params, device="cpu", weights=random_weights, should_stop=should_stop, resume=resume
            )
        )
        assert isinstance(events[-1], Result)
        return events, events[-1]

    return run


# --- The service's real parts: PostgreSQL and Redis on this machine, processes we start. ---

POSTGRES_ADMIN_URL = os.environ.get("IMPASTO_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
SYSTEM_REDIS_URL = os.environ.get("IMPASTO_TEST_REDIS", "redis://127.0.0.1:6379/0")


@pytest.fixture
def postgres_url():
    """A new, empty PostgreSQL database on this machine's server, dropped afterwards."""
    from tests.servers import temporary_postgres_database

    with temporary_postgres_database(POSTGRES_ADMIN_URL) as url:
        yield url


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory):
    """A redis-server of the tests' own, on a free port (as `impasto up` starts one)."""
    from shared.launcher import start_redis, stop_all

    processes = []
    url = start_redis(tmp_path_factory.mktemp("redis"), processes)
    yield url
    stop_all(processes)


@pytest.fixture
def queue_name():
    """A queue of its own for each test, so tests never take each other's messages."""
    return f"impasto-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_settings(tmp_path, queue_name):
    from shared.settings import load_settings

    def make(**overrides):
        env = {
            "IMPASTO_DATA_DIR": str(tmp_path / "data"),
            "IMPASTO_BROKER_URL": SYSTEM_REDIS_URL,
            "IMPASTO_QUEUE": queue_name,
        }
        env.update({k: str(v) for k, v in overrides.items()})
        return load_settings(env)

    return make


# The browser tests (test_browser*.py): Debian's Chromium, driven by Playwright, against the
# whole service (`impasto up`) on a free port, one per test module.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
MISSING_CHROMIUM = (
    f"{CHROMIUM} is missing: the browser tests need Debian's Chromium (as root: apt-get install -y chromium)"
)
START_TIMEOUT_S = 90
STOP_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """The whole service on a free port, its data in a temporary folder; yields the base URL."""
    import signal

    from shared.launcher import free_port
    from tests.servers import service_env, start, stop, wait_for_http

    data_dir = tmp_path_factory.mktemp("impasto-up")
    port = free_port()
    log = data_dir / "up.log"
    env = service_env({"TORCH_HOME": str(data_dir / "torch-home")})
    process = start(["up", "--port", str(port), "--data-dir", str(data_dir)], env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(base + "/healthz", process, log, timeout=START_TIMEOUT_S)
        yield base
    finally:
        stop(process, signal.SIGINT, timeout=STOP_TIMEOUT_S)  # Ctrl-C, as a person would


@pytest.fixture(scope="module")
def browser():
    """Chromium, launched once per module."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        pytest.fail(MISSING_CHROMIUM)
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@pytest.fixture
def problems(page) -> list[str]:
    """The console errors (a CSP violation is one) and uncaught exceptions of the module's `page`."""
    found: list[str] = []
    page.on("console", lambda msg: found.append(f"console.error: {msg.text}") if msg.type == "error" else None)
    page.on("pageerror", lambda err: found.append(f"uncaught: {err}"))
    return found
