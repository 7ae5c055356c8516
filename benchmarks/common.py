"""Helpers shared by the benchmarks: timing, the machine's description, markdown tables, JSON records."""

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax


def fail(prog: str, message: str):
    """One line on stderr and exit code 2: what was wrong with the command."""
    print(f"{prog}: {message}", file=sys.stderr)
    sys.exit(2)


def median_time(fn, *args, repeats: int = 5) -> float:
    """Median wall time of a compiled call, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def machine() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')} x{jax.device_count()}, {platform.processor() or platform.machine()}, jax {jax.__version__}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
