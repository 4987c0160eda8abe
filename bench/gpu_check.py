"""The GPU path measured by one script (issue 12, section 4), in under 8 minutes on a CUDA machine.

    python bench/gpu_check.py --out DIR [--carry CARRY]   # on the GPU machine
    python bench/gpu_check.py --cpu-dry-run --out DIR      # every step on the CPU, tiny sizes
    python bench/gpu_check.py --prepare CARRY              # where pip and apt reach their registries

Steps, each with its share of the time and none stopping the others when it fails:

1. the device, and its measured matmul peaks (torch.matmul of big square matrices in fp32,
   TF32 and bf16, best of several);
2. the CUDA-marked tests (`pytest -m cuda tests/test_cuda.py`);
3. `bench/engine.py --json` at 512 and 1024 px, in bf16 and fp32: ms per evaluation and the
   fraction of the same precision's matmul peak that the engine's FLOPs reach;
4. `bench/memory.py --json`: peak GPU memory of a 2048 px job (3 stylize iterations);
5. `impasto stylize` at 512 px, 300 iterations, in fp32 and in bf16: the PSNR between the two;
6. a real service (a redis-server, SQLite, `impasto web`, `impasto worker --gpus all`) given
   4 jobs of 512 px, 300 iterations at once: jobs per minute.

It writes DIR/gpu_check.json, DIR/gpu_check.md (the table it prints), DIR/logs/ and the two
pictures. Without a GPU it prints one line starting `no GPU` and exits 0.

The GPU machine may have only torch, torchvision, numpy, Pillow, OpenCV, prometheus-client and
requests, and no registry: `--prepare CARRY` (run elsewhere) downloads the rest as wheels for
Python 3.12 and the Debian redis-server with the libraries it needs; `--carry CARRY` there
installs the wheels into CARRY/site (pip --no-index, or by unzipping) and puts them and
redis-server on the path of every step. The project itself runs from this source tree.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

CONTENT = REPO_ROOT / "tests" / "data" / "tubingen.jpg"
STYLE = REPO_ROOT / "tests" / "data" / "starry_night.jpg"
BUDGET_S = 450  # 8 minutes, less the start-up and a margin
FINAL = {"succeeded", "failed", "canceled"}

# What a step runs, on a GPU and (--cpu-dry-run) on the CPU. The targets are issue 12's.
SIZES = {
    "gpu": {"engine": [512, 1024], "memory": 2048, "picture": 512, "picture_iterations": 300, "job": 512},
    "cpu": {"engine": [64], "memory": 128, "picture": 64, "picture_iterations": 4, "job": 64},
}
JOB_ITERATIONS = {"gpu": 300, "cpu": 2}
JOBS = 4
MEMORY_ITERATIONS = 3
TARGET_MS_512_BF16 = 3.0
TARGET_MEMORY_GIB = 24.0
TARGET_PSNR_DB = 40.0

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
    wheels.mkdir(parents=True, exist_ok=True)
    platforms = [flag for p in WHEEL_PLATFORMS for flag in ("--platform", p.format(arch=arch))]
    command = [sys.executable, "-m", "pip", "download", "--dest", str(wheels), "--only-binary=:all:"]
    command += ["--python-version", python_version, *platforms, *carried_requirements()]
    print("$ " + " ".join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        print("gpu_check: pip download failed", file=sys.stderr)
        return 1
    debs = carry / "debs"
    debs.mkdir(exist_ok=True)
    download = subprocess.run(["apt-get", "download", *REDIS_PACKAGES], cwd=debs)
    if download.returncode != 0:
        print("gpu_check: apt-get download failed (apt-get update first?)", file=sys.stderr)
        return 1
    root = carry / "redis" / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    server = root / "usr" / "bin" / "redis-server"
    if not server.exists():  # Debian's redis-server package holds only this link
        server.symlink_to("redis-check-rdb")
    wrapper = carry / "redis" / "bin" / "redis-server"
    wrapper.parent.mkdir(exist_ok=True)
    libs = f"$root/usr/lib/{arch}-linux-gnu:$root/lib/{arch}-linux-gnu"
    wrapper.write_text(
        "#!/bin/sh\n"
        "# The carried Debian redis-server, with the carried libraries it links.\n"
        'root="$(dirname "$(readlink -f "$0")")/../root"\n'
        f'LD_LIBRARY_PATH="{libs}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}" exec "$root/usr/bin/redis-server" "$@"\n'
    )
    wrapper.chmod(0o755)
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file()) / 2**20
    print(f"gpu_check: {len(list(wheels.glob('*.whl')))} wheels and redis-server in {carry} ({size:.0f} MiB)")
    return 0


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


def use_carry(carry: Path) -> dict[str, str]:
    """Install the carried wheels into CARRY/site once, put it and redis-server on the paths; the
    environment variables every step's process gets."""
    wheels = sorted((carry / "wheels").glob("*.whl"))
    site = carry / f"site-py{sys.version_info.major}{sys.version_info.minor}"
    stamp = site / ".wheels"
    listing = "\n".join(w.name for w in wheels)
    if wheels and not (stamp.exists() and stamp.read_text() == listing):
        shutil.rmtree(site, ignore_errors=True)
        install = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(site)]
        done = subprocess.run([*install, *map(str, wheels)], capture_output=True, text=True)
        if done.returncode != 0:  # no pip on this Python: a wheel is a zip of what goes on sys.path
            shutil.rmtree(site, ignore_errors=True)
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive:
                    archive.extractall(site)
        stamp.write_text(listing)
    env = {}
    if site.is_dir():
        sys.path.insert(1, str(site))
        env["PYTHONPATH"] = str(site)
    redis_bin = carry / "redis" / "bin"
    if (redis_bin / "redis-server").exists():
        env["PATH"] = f"{redis_bin}{os.pathsep}{os.environ.get('PATH', '')}"
        os.environ["PATH"] = env["PATH"]
    return env


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


# --------------------------------------------------------------------------- running steps


class Check:
    """The steps' shared state: where logs go, the environment, the time left."""

    def __init__(self, out: Path, env: dict[str, str], dry_run: bool, budget: float):
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.dry_run = dry_run
        self.kind = "cpu" if dry_run else "gpu"
        self.device = "cpu" if dry_run else "cuda"
        self.deadline = time.monotonic() + budget
        self.results: dict[str, dict] = {}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, command: list[str], limit: float) -> str:
        """Run `command` (its output in logs/NAME.log) for at most `limit` s or the time left;
        its output, or StepFailed."""
        timeout = min(limit, self.left())
        if timeout < 5:
            raise StepFailed("no time left")
        log = self.logs / f"{name}.log"
        with open(log, "w") as out:
            out.write("$ " + " ".join(command) + "\n")
            out.flush()
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(process)
                raise StepFailed(f"timed out after {timeout:.0f} s; see logs/{log.name}") from None
        text = log.read_text()
        if process.returncode != 0:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise StepFailed(f"exit {process.returncode}: {tail[-400:]} (logs/{log.name})")
        return text

    def step(self, name: str, function: Callable[[], dict]) -> None:
        began = time.monotonic()
        print(f"# {name} ...", file=sys.stderr, flush=True)
        try:
            result = {"status": "ok", **function()}
        except StepFailed as err:
            result = {"status": "failed", "error": str(err)}
        except StepSkipped as err:
            result = {"status": "skipped", "error": str(err)}
        except Exception as err:  # a bug or a missing package: recorded, and the next step runs
            result = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
        result["seconds"] = round(time.monotonic() - began, 1)
        self.results[name] = result
        print(f"# {name}: {result['status']} in {result['seconds']} s {result.get('error', '')}", file=sys.stderr)


class StepFailed(RuntimeError):
    """A step could not give its figures; the message says why."""


class StepSkipped(RuntimeError):
    """A step that this tree cannot run yet; the message says why."""


def _kill_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _json_lines(text: str) -> list[dict]:
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                pass
    return found


def _takes_precision(script: str) -> bool:
    """Whether a bench script has --precision yet (read from its source: --help would cost a
    torch import)."""
    return '"--precision"' in (REPO_ROOT / script).read_text()


# --------------------------------------------------------------------------- the steps


def device_and_peaks(check: Check) -> dict:
    """The device, and the best GFLOP/s of big square matmuls in fp32, TF32 and bf16."""
    import torch

    device = torch.device(check.device)
    n = 512 if check.dry_run else 8192
    figures: dict = {"torch": torch.__version__, "device": check.device}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        figures |= {
            "name": props.name,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "bf16": torch.cuda.is_bf16_supported(),
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,  # what the engine's convolutions may use
        }
    else:
        figures["name"] = f"CPU, {torch.get_num_threads()} threads"
    peaks = {}
    for label, dtype, tf32 in (
        ("fp32", torch.float32, False),
        ("tf32", torch.float32, True),
        ("bf16", torch.bfloat16, False),
    ):
        if device.type == "cpu" and label == "tf32":
            continue
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            peaks[label] = _matmul_gflops(torch, device, dtype, n)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous
    figures["matmul_peak_gflops"] = peaks
    figures["matmul_n"] = n
    return figures


def _matmul_gflops(torch, device, dtype, n: int, repeats: int = 10) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((n, n), device=device, dtype=dtype, generator=generator)
    b = torch.randn((n, n), device=device, dtype=dtype, generator=generator)
    best = math.inf
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:  # two warm-ups
            best = min(best, time.perf_counter() - began)
    return round(2 * n**3 / best / 1e9, 1)


def cuda_tests(check: Check) -> dict:
    text = check.run(
        "cuda-tests", [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rs"], 180
    )
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", text)}
    return {"counts": counts, "summary": text.strip().splitlines()[-1]}


def engine(check: Check) -> dict:
    command = [sys.executable, "bench/engine.py", "--device", check.device, "--json", "--size"]
    command += [str(size) for size in SIZES[check.kind]["engine"]]
    if check.dry_run:
        command += ["--repeats", "1"]
    peaks = check.results.get("device", {}).get("matmul_peak_gflops", {})
    precisions = ["bf16", "fp32"] if _takes_precision("bench/engine.py") else [None]
    if check.dry_run and precisions != [None]:
        # A CPU runs bf16 by emulation (its bf16 matmul peak is a few GFLOP/s here): fp32 only.
        precisions = ["fp32"]
    rows = []
    for precision in precisions:
        extra = ["--precision", precision] if precision else []
        text = check.run(f"engine-{precision or 'default'}", [*command, *extra], 150)
        for r in _json_lines(text):
            if "engine_ms" not in r:
                continue
            ran = r.get("precision") or precision or "fp32"
            gflops = r.get("engine_gflops")
            rows.append(
                {
                    "size": r["size"],
                    "shape": f"{r['width']}x{r['height']}",
                    "precision": ran,
                    "ms": r["engine_ms"],
                    "gflops": gflops,
                    # Against the same precision's measured peak (fp32: plain FP32, TF32 not allowed).
                    "peak_fraction": round(gflops / peaks[ran], 3) if gflops and peaks.get(ran) else None,
                    "raw": r,
                }
            )
    if not rows:
        raise StepFailed("bench/engine.py printed no JSON figures")
    return {"rows": rows, "precision_flag": precisions != [None]}


def memory(check: Check) -> dict:
    size = SIZES[check.kind]["memory"]
    command = [sys.executable, "bench/memory.py", "--device", check.device, "--json", "--size", str(size)]
    command += ["--iterations", str(1 if check.dry_run else MEMORY_ITERATIONS)]
    precisions = ["auto", "fp32"] if _takes_precision("bench/memory.py") else [None]
    if check.dry_run:
        precisions = precisions[-1:]  # each size is two processes that import torch: one is enough here
    rows = []
    for precision in precisions:
        extra = ["--precision", precision] if precision else []
        for r in _json_lines(check.run(f"memory-{precision or 'default'}", [*command, *extra], 150)):
            peak_mib = r.get("cuda_peak_mib", r.get("peak_rss_mib"))
            rows.append(
                {"precision": r.get("precision") or precision or "default", "peak_gib": peak_mib / 1024, "raw": r}
            )
    if not rows:
        raise StepFailed("bench/memory.py printed no JSON figures")
    return {
        "size": size,
        "what": "cuda max_memory_allocated" if check.device == "cuda" else "CPU peak RSS",
        "rows": rows,
    }


def pictures(check: Check) -> dict:
    import numpy as np
    from PIL import Image

    stylize = [sys.executable, "-m", "shared.cli", "stylize"]
    if "--precision" not in check.run("stylize-help", [*stylize, "--help"], 60):
        raise StepSkipped("impasto stylize has no --precision yet")
    size, iterations = SIZES[check.kind]["picture"], SIZES[check.kind]["picture_iterations"]
    images, runs = {}, {}
    for precision in ("fp32", "bf16"):
        path = check.out / f"picture-{size}-{precision}.png"
        command = [*stylize, str(CONTENT), str(STYLE), "-o", str(path), "--size", str(size)]
        command += ["--iterations", str(iterations), "--weights", "random", "--device", check.device]
        command += ["--precision", precision, "--json"]
        result = _json_lines(check.run(f"stylize-{precision}", command, 120))[-1]
        runs[precision] = {k: result.get(k) for k in ("seconds", "device", "losses", "iterations")}
        with Image.open(path) as image:
            images[precision] = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    mse = float(np.mean((images["fp32"] - images["bf16"]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    return {"size": size, "iterations": iterations, "psnr_db": round(psnr, 2), "runs": runs}


def service(check: Check) -> dict:
    """A redis-server, SQLite, `impasto web` and `impasto worker --gpus all`: JOBS jobs at once."""
    import requests

    from shared.launcher import free_port, start_redis, stop_all
    from tests.servers import start, stop, wait_for_http, wait_for_log

    size, iterations = SIZES[check.kind]["job"], JOB_ITERATIONS[check.kind]
    data = Path(tempfile.mkdtemp(prefix="impasto-gpu-check-"))
    redis_processes: list = []
    processes = []
    try:
        broker = start_redis(data, redis_processes)
        env = {k: v for k, v in check.env.items() if not k.startswith("IMPASTO_")}
        env |= {
            "IMPASTO_DATA_DIR": str(data / "data"),
            "IMPASTO_BROKER_URL": broker,
            "IMPASTO_QUEUE": f"impasto-gpu-check-{secrets.token_hex(4)}",
            "IMPASTO_ANONYMOUS_JOBS_PER_HOUR": "0",
            "IMPASTO_OFFLINE": "1",
            "IMPASTO_SECRET_KEY": secrets.token_hex(32),
        }
        migrate = start(["db", "upgrade"], env, check.logs / "service-db.log")
        if migrate.wait(timeout=max(5, min(120, check.left()))) != 0:
            raise StepFailed("impasto db upgrade failed (logs/service-db.log)")
        port = free_port()
        worker_log, web_log = check.logs / "service-worker.log", check.logs / "service-web.log"
        processes.append(start(["worker", "--gpus", "all"], env, worker_log))
        processes.append(start(["web", "--port", str(port), "--workers", "2"], env, web_log))
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/healthz", processes[1], web_log, timeout=min(90, check.left()))
        wait_for_log(worker_log, "ready.", processes[0], timeout=min(120, check.left()))
        http = requests.Session()

        def submit(job_size: int, job_iterations: int) -> str:
            with open(CONTENT, "rb") as content, open(STYLE, "rb") as style:
                answer = http.post(
                    f"{base}/api/v1/jobs",
                    files={"content": content, "style": style},
                    data={"size": job_size, "iterations": job_iterations, "weights": "random"},
                    timeout=60,
                )
            if answer.status_code != 202:
                raise StepFailed(f"submission refused: {answer.status_code} {answer.text[:300]}")
            return answer.json()["id"]

        def wait(ids: list[str]) -> dict[str, dict]:
            jobs: dict[str, dict] = {}
            while True:
                for job_id in ids:
                    if jobs.get(job_id, {}).get("status") not in FINAL:
                        jobs[job_id] = http.get(f"{base}/api/v1/jobs/{job_id}", timeout=30).json()
                if all(job["status"] in FINAL for job in jobs.values()):
                    return jobs
                if check.left() < 2:
                    raise StepFailed(f"jobs unfinished when the time ran out: {[j['status'] for j in jobs.values()]}")
                time.sleep(0.2)

        # The pool process loads torch and VGG-19 on its first job: a small one, not counted.
        wait([submit(SIZES["cpu"]["job"], 1)])
        began = time.perf_counter()
        ids = [submit(size, iterations) for _ in range(JOBS)]
        jobs = wait(ids)
        wall = time.perf_counter() - began
    finally:
        for process in reversed(processes):
            stop(process)
        stop_all(redis_processes)
        shutil.rmtree(data, ignore_errors=True)
    statuses = [job["status"] for job in jobs.values()]
    if statuses != ["succeeded"] * JOBS:
        errors = [job.get("error") for job in jobs.values() if job["status"] != "succeeded"]
        raise StepFailed(f"jobs ended {statuses}: {errors}")
    return {
        "jobs": JOBS,
        "size": size,
        "iterations": iterations,
        "wall_seconds": round(wall, 1),
        "jobs_per_minute": round(JOBS / wall * 60, 2),
        "job_seconds": [round(_elapsed(job["started_at"], job["finished_at"]), 2) for job in jobs.values()],
    }


def _elapsed(start: str, end: str) -> float:
    from datetime import datetime

    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


# --------------------------------------------------------------------------- the report


def table(check: Check) -> str:
    r = check.results
    rows = [("check", "result", "target")]

    def failed(name: str) -> str | None:
        step = r.get(name)
        if step is None:
            return "not run"
        return None if step["status"] == "ok" else f"{step['status']}: {step.get('error', '')}"

    d = r.get("device", {})
    memory_gib = f" ({d['memory_gib']} GiB)" if "memory_gib" in d else ""
    rows.append(("device", failed("device") or f"{d['name']}{memory_gib}, torch {d['torch']}", ""))
    if not failed("device"):
        peaks = " / ".join(f"{k} {v / 1000:.3g}" for k, v in d["matmul_peak_gflops"].items())
        rows.append((f"matmul peak, {d['matmul_n']}² (TFLOP/s)", peaks, ""))
    t = r.get("cuda-tests", {})
    rows.append(("CUDA-marked tests", failed("cuda-tests") or t["summary"], "all pass"))
    if failed("engine"):
        rows.append(("bench/engine.py", failed("engine"), ""))
    else:
        for row in r["engine"]["rows"]:
            fraction = (
                f", {100 * row['peak_fraction']:.0f}% of the {row['precision']} matmul peak"
                if row["peak_fraction"]
                else ""
            )
            target = (
                f"≤ {TARGET_MS_512_BF16:g} ms (H100/H200)" if row["size"] == 512 and row["precision"] == "bf16" else ""
            )
            rows.append(
                (f"engine, {row['shape']} {row['precision']}", f"{row['ms']:.2f} ms per evaluation{fraction}", target)
            )
    if failed("memory"):
        rows.append(("bench/memory.py", failed("memory"), ""))
    else:
        m = r["memory"]
        for row in m["rows"]:
            rows.append(
                (
                    f"peak memory, {m['size']} px job, {row['precision']}",
                    f"{row['peak_gib']:.2f} GiB ({m['what']})",
                    f"≤ {TARGET_MEMORY_GIB:g} GiB" if not check.dry_run else "",
                )
            )
    p = r.get("pictures", {})
    rows.append(
        (
            f"fp32 vs bf16 picture, {SIZES[check.kind]['picture']} px",
            failed("pictures") or f"PSNR {p['psnr_db']:.1f} dB",
            f"≥ {TARGET_PSNR_DB:g} dB",
        )
    )
    s = r.get("service", {})
    rows.append(
        (
            f"service, {JOBS} jobs at once, {SIZES[check.kind]['job']} px, {JOB_ITERATIONS[check.kind]} iterations",
            failed("service") or f"{s['jobs_per_minute']:.1f} jobs per minute ({s['wall_seconds']:.1f} s)",
            "",
        )
    )
    lines = ["| " + " | ".join(cells) + " |" for cells in rows]
    lines.insert(1, "| --- | --- | --- |")
    return "\n".join(lines) + "\n"


STEPS: dict[str, Callable[[Check], dict]] = {
    "device": device_and_peaks,
    "cuda-tests": cuda_tests,
    "engine": engine,
    "memory": memory,
    "pictures": pictures,
    "service": service,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json, gpu_check.md, logs and pictures")
    parser.add_argument("--carry", type=Path, help="a folder --prepare filled: wheels and redis-server to use")
    parser.add_argument("--cpu-dry-run", action="store_true", help="every step on the CPU at tiny sizes")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help=f"seconds for all steps (default {BUDGET_S})")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(STEPS),
        metavar="STEP[,STEP]",
        help=f"run only these steps, to redo one that failed ({', '.join(STEPS)}; the engine's peak "
        "fractions need the device step)",
    )
    parser.add_argument("--prepare", type=Path, metavar="CARRY", help="download what --carry needs into CARRY")
    parser.add_argument("--python-version", default="3.12", help="--prepare: the GPU machine's Python (default 3.12)")
    parser.add_argument("--arch", default="x86_64", help="--prepare: the GPU machine's architecture (default x86_64)")
    args = parser.parse_args(argv)
    if unknown := set(args.only) - set(STEPS):
        parser.error(f"--only: no step {', '.join(sorted(unknown))}; the steps are {', '.join(STEPS)}")
    if args.prepare:
        return prepare(args.prepare, args.python_version, args.arch)
    if args.out is None:
        parser.error("--out DIR is needed")

    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            f"no GPU: torch {torch.__version__} sees no CUDA device; nothing measured "
            "(--cpu-dry-run tries every step on the CPU)"
        )
        return 0
    sys.stdout.reconfigure(line_buffering=True)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(REPO_ROOT)]
    if args.carry:
        carried = use_carry(args.carry.resolve())
        paths += [carried["PYTHONPATH"]] if "PYTHONPATH" in carried else []
        env.update({k: v for k, v in carried.items() if k != "PYTHONPATH"})
    metadata = project_metadata(out / "metadata")
    if metadata:
        sys.path.append(metadata)
        paths.append(metadata)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if args.cpu_dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # what a CPU machine has, even on a GPU one

    check = Check(out, env, args.cpu_dry_run, args.budget)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in STEPS:
        if name in args.only:
            check.step(name, lambda name=name: STEPS[name](check))
    report = table(check)
    title = f"gpu_check {'(CPU dry run) ' if args.cpu_dry_run else ''}{started}"
    (out / "gpu_check.md").write_text(f"# {title}\n\n{report}")
    (out / "gpu_check.json").write_text(
        json.dumps({"started": started, "dry_run": args.cpu_dry_run, "steps": check.results}, indent=1, default=str)
    )
    print(f"{title}\n\n{report}")
    print(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, logs in {check.logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
