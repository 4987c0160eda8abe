"""What bench/gpu_check.py carries to a GPU machine without a registry: `--prepare` downloads
the wheels and the Debian redis-server here, `--carry` installs and uses them there, and a
source tree never installed gets the metadata that names the `impasto` subcommands.

A library module of bench/ (not a package). Standard library only: it runs before torch is
imported, and on a machine that may have nothing else yet.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The GPU machine has these; `--prepare` leaves them out (import names on the right).
ON_THE_GPU_MACHINE = {"torch", "torchvision", "numpy", "pillow", "prometheus-client", "requests"}
# Runtime dependencies that a run on SQLite and local storage never imports.
NOT_NEEDED = {"psycopg", "boto3"}
# From the test extras: what the CUDA-marked tests need (pyproject sets a pytest-timeout option).
TEST_RUNNER = {"pytest", "pytest-timeout"}
WHEEL_PLATFORMS = ("manylinux_2_28_{arch}", "manylinux_2_17_{arch}", "manylinux2014_{arch}")
# redis-tools holds the server binary (redis-server is a link to redis-check-rdb); these are the
# libraries it links that a GPU machine's base image may lack (libc, libssl and libsystemd it has).
REDIS_PACKAGES = ("redis-tools", "liblzf1", "libjemalloc2", "libatomic1")


# --------------------------------------------------------------------------- preparing


def prepare(carry: Path, python_version: str, arch: str) -> int:
    """Download the wheels and the Debian redis-server that `--carry` uses, into `carry`."""
    wheels = carry / "wheels"
    if not download_wheels(wheels, python_version, arch):
        print("gpu_check: pip download failed", file=sys.stderr)
        return 1
    if not download_redis(carry / "debs"):
        print("gpu_check: apt-get download failed (apt-get update first?)", file=sys.stderr)
        return 1
    unpack_redis(carry / "debs", carry / "redis" / "root")
    write_redis_wrapper(carry / "redis" / "bin" / "redis-server", arch)
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file()) / 2**20
    print(f"gpu_check: {len(list(wheels.glob('*.whl')))} wheels and redis-server in {carry} ({size:.0f} MiB)")
    return 0


def download_wheels(wheels: Path, python_version: str, arch: str) -> bool:
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p.format(arch=arch))]
    command = [sys.executable, "-m", "pip", "download", "--dest", str(wheels), "--only-binary=:all:"]
    command += ["--python-version", python_version, *platforms, *carried_requirements()]
    print("$ " + " ".join(command), flush=True)
    return subprocess.run(command).returncode == 0


def download_redis(debs: Path) -> bool:
    debs.mkdir(exist_ok=True)
    return subprocess.run(["apt-get", "download", *REDIS_PACKAGES], cwd=debs).returncode == 0


def unpack_redis(debs: Path, root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    server = root / "usr" / "bin" / "redis-server"
    if not server.exists():  # Debian's redis-server package holds only this link
        server.symlink_to("redis-check-rdb")


def write_redis_wrapper(wrapper: Path, arch: str) -> None:
    wrapper.parent.mkdir(exist_ok=True)
    libs = f"$root/usr/lib/{arch}-linux-gnu:$root/lib/{arch}-linux-gnu"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# The carried Debian redis-server, with the carried libraries it links.\n"
        'root="$(dirname "$(readlink -f "$0")")/../root"\n'
        f'LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "$root/usr/bin/redis-server" "$@"\n'
    )
    wrapper.chmod(0o755)


def carried_requirements() -> list[str]:
    """pyproject.toml's runtime dependencies that the GPU machine lacks, and the test runner."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = []
    for requirement in project["dependencies"]:
        name = _requirement_name(requirement)
        if name not in ON_THE_GPU_MACHINE | NOT_NEEDED:
            wanted.append(requirement)
    wanted += [r for r in project["optional-dependencies"]["test"] if _requirement_name(r) in TEST_RUNNER]
    return wanted


def _requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group().lower().replace("_", "-")


# --------------------------------------------------------------------------- using what was carried


def use_carry(carry: Path) -> dict[str, str]:
    """Install the carried wheels into CARRY/site once, put it and redis-server on the paths; the
    environment variables every step's process gets."""
    site = carry / f"site-py{sys.version_info.major}{sys.version_info.minor}"
    install_wheels(sorted((carry / "wheels").glob("*.whl")), site)
    env = {}
    if site.is_dir():
        sys.path.insert(1, str(site))
        env["PYTHONPATH"] = str(site)
    redis_bin = carry / "redis" / "bin"
    if (redis_bin / "redis-server").exists():
        env["PATH"] = f"{redis_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ["PATH"] = env["PATH"]
    return env


def install_wheels(wheels: list[Path], site: Path) -> None:
    """`wheels` into `site`, unless the stamp there says these very wheels already are."""
    stamp = site / ".wheels"
    listing = "\n".join(w.name for w in wheels)
    if not wheels or (stamp.exists() and stamp.read_text() == listing):
        return
    shutil.rmtree(site, ignore_errors=True)
    install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site)]
    done = subprocess.run([*install, *map(str, wheels)], capture_output=True, text=True)
    if done.returncode != 0:  # no pip on this Python: a wheel is a zip of what goes on sys.path
        shutil.rmtree(site, ignore_errors=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
    stamp.write_text(listing)


def project_metadata(folder: Path) -> str | None:
    """The `impasto` subcommands are entry points; from a source tree that was never installed,
    write the metadata that names them into `folder` (put on PYTHONPATH) and return it."""
    from importlib.metadata import entry_points

    if entry_points(group="impasto.commands"):
        return None
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    info = folder / f"impasto-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: impasto\nVersion: {project['version']}\n")
    lines = []
    for group, entries in {"console_scripts": project["scripts"], **project["entry-points"]}.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {target}" for name, target in entries.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return str(folder)
