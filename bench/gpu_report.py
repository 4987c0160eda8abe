"""bench/gpu_check.py's table: one row per figure, with issue 12's target beside it, as it is
printed and written to gpu_check.md. A library module of bench/ (not a package)."""

from __future__ import annotations

from gpu_runner import Check
from gpu_steps import JOB_ITERATIONS, JOBS, SIZES, TARGET_MEMORY_GIB, TARGET_MS_512_BF16, TARGET_PSNR_DB

Row = tuple[str, str, str]


def failed(results: dict[str, dict], name: str) -> str | None:
    """Why step `name` has no figures, or None when it has."""
    step = results.get(name)
    if step is None:
        return "not run"
    return None if step["status"] == "ok" else f"{step['status']}: {step.get('error', '')}"


def table(check: Check) -> str:
    rows: list[Row] = [("check", "result", "target")]
    rows += device_rows(check.results)
    t = check.results.get("cuda-tests", {})
    rows.append(("CUDA-marked tests", failed(check.results, "cuda-tests") or t["summary"], "all pass"))
    rows += engine_rows(check.results)
    rows += memory_rows(check.results, check.dry_run)
    rows.append(pictures_row(check))
    rows.append(service_row(check))
    lines = ["| " + " | ".join(cells) + " |" for cells in rows]
    lines.insert(1, "| --- | --- | --- |")
    return "\n".join(lines) + "\n"


def device_rows(r: dict[str, dict]) -> list[Row]:
    d = r.get("device", {})
    memory_gib = f" ({d['memory_gib']} GiB)" if "memory_gib" in d else ""
    rows = [("device", failed(r, "device") or f"{d['name']}{memory_gib}, torch {d['torch']}", "")]
    if not failed(r, "device"):
        peaks = " / ".join(f"{k} {v / 1000:.3g}" for k, v in d["matmul_peak_gflops"].items())
        rows.append((f"matmul peak, {d['matmul_n']}² (TFLOP/s)", peaks, ""))
    return rows


def engine_rows(r: dict[str, dict]) -> list[Row]:
    if failed(r, "engine"):
        return [("bench/engine.py", failed(r, "engine"), "")]
    rows = []
    for row in r["engine"]["rows"]:
        fraction = (
            f", {100 * row['peak_fraction']:.0f}% of the {row['precision']} matmul peak" if row["peak_fraction"] else ""
        )
        target = f"≤ {TARGET_MS_512_BF16:g} ms (H100/H200)" if row["size"] == 512 and row["precision"] == "bf16" else ""
        result = f"{row['ms']:.2f} ms per evaluation{fraction}"
        rows.append((f"engine, {row['shape']} {row['precision']}", result, target))
    return rows


def memory_rows(r: dict[str, dict], dry_run: bool) -> list[Row]:
    if failed(r, "memory"):
        return [("bench/memory.py", failed(r, "memory"), "")]
    m = r["memory"]
    return [
        (
            f"peak memory, {m['size']} px job, {row['precision']}",
            f"{row['peak_gib']:.2f} GiB ({m['what']})",
            f"≤ {TARGET_MEMORY_GIB:g} GiB" if not dry_run else "",
        )
        for row in m["rows"]
    ]


def pictures_row(check: Check) -> Row:
    p = check.results.get("pictures", {})
    return (
        f"fp32 vs bf16 picture, {SIZES[check.kind]['picture']} px",
        failed(check.results, "pictures") or f"PSNR {p['psnr_db']:.1f} dB",
        f"≥ {TARGET_PSNR_DB:g} dB",
    )


def service_row(check: Check) -> Row:
    s = check.results.get("service", {})
    return (
        f"service, {JOBS} jobs at once, {SIZES[check.kind]['job']} px, {JOB_ITERATIONS[check.kind]} iterations",
        failed(check.results, "service") or f"{s['jobs_per_minute']:.1f} jobs per minute ({s['wall_seconds']:.1f} s)",
        "",
    )
