"""Printing a benchmark's table and writing its JSON, the same way for every benchmark."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Mapping
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_info() -> dict[str, str]:
    """The CPU's model name and feature flags (Linux): figures depend on both (SHA
    and vector extensions, for one)."""
    info: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and "cpu_model" not in info:
            info["cpu_model"] = value.strip()
        elif key == "flags" and "cpu_flags" not in info:
            info["cpu_flags"] = value.strip()
    return info


def machine() -> dict[str, object]:
    return {
        **_cpu_info(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(name: str, results: Mapping[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**results, "machine": machine()}, indent=2, default=str) + "\n")
    return path


def table(rows: list[tuple[str, object]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)]
    for key, value in rows:
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]
