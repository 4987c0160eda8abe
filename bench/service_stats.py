"""bench/service.py's figures: percentiles, a summary of one series and its table. A library
module of bench/ (not a package)."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }


def table(title: str, unit: str, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"{'':34} {'n':>4} {'median':>9} {'p90':>9} {'p99':>9} {'min':>9} {'max':>9}  ({unit})")
    for name, s in rows.items():
        print(f"{name:34} {s['n']:>4} " + " ".join(f"{s[k]:>9.1f}" for k in ("median", "p90", "p99", "min", "max")))
