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
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

# bench/ is not a package: the repository root (for `shared`, `worker` and `tests`) and the
# library modules beside this one. Only the standard library is imported before torch: `--prepare`
# runs where there may be nothing else, and `--carry` puts the rest on the path first.
REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from gpu_carry import prepare, project_metadata, use_carry  # noqa: E402
from gpu_report import table  # noqa: E402
from gpu_runner import Check  # noqa: E402
from gpu_service import service  # noqa: E402
from gpu_steps import cuda_tests, device_and_peaks, engine, memory, pictures  # noqa: E402

BUDGET_S = 450  # 8 minutes, less the start-up and a margin

STEPS: dict[str, Callable[[Check], dict]] = {
    "device": device_and_peaks,
    "cuda-tests": cuda_tests,
    "engine": engine,
    "memory": memory,
    "pictures": pictures,
    "service": service,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    if args.out is None and not args.prepare:
        parser.error("--out DIR is needed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare:
        return prepare(args.prepare, args.python_version, args.arch)

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
    check = Check(out, step_env(args, out), args.cpu_dry_run, args.budget)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for name in STEPS:
        if name in args.only:
            check.step(name, lambda name=name: STEPS[name](check))
    write_report(check, started, args.cpu_dry_run)
    return 0


def step_env(args: argparse.Namespace, out: Path) -> dict[str, str]:
    """The environment every step's process gets: this tree, what was carried and the metadata
    of the `impasto` subcommands on its paths, and no GPU on a dry run."""
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
    return env


def write_report(check: Check, started: str, dry_run: bool) -> None:
    """gpu_check.md and gpu_check.json in the output folder, and the table on stdout."""
    report = table(check)
    title = f"gpu_check {'(CPU dry run) ' if dry_run else ''}{started}"
    (check.out / "gpu_check.md").write_text(f"# {title}\n\n{report}")
    (check.out / "gpu_check.json").write_text(
        json.dumps({"started": started, "dry_run": dry_run, "steps": check.results}, indent=1, default=str)
    )
    print(f"{title}\n\n{report}")
    print(f"written: {check.out / 'gpu_check.json'}, {check.out / 'gpu_check.md'}, logs in {check.logs}")


if __name__ == "__main__":
    sys.exit(main())
