"""Shared measurement helpers: interleaved repetitions, medians, paired ratios and the run's conditions.

Machines here are shared and noisy, so absolute times drift between minutes. Every comparison therefore runs its
cases side by side (one repetition = each case once, in an order rotated every repetition) and reports the median
of the per-repetition ratios: a slow minute hits both sides of a pair alike and cancels out.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

Case = Callable[[], float | None]


def interleaved(cases: Mapping[str, Case], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Runs each case `warmup` times untimed, then `reps` timed rounds in rotating order.

    A case returns None (its wall time is taken) or its own measurement in seconds (e.g. a per-step time
    taken inside it, free of its set-up). Returns every case's `reps` measurements in round order.
    """
    names = list(cases)
    for _ in range(warmup):
        for name in names:
            cases[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            started = time.perf_counter()
            measured = cases[name]()
            times[name].append(time.perf_counter() - started if measured is None else measured)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """The median over repetitions of numerator[i] / denominator[i] (measured in the same round)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def spread(values: list[float]) -> str:
    """'median (min-max)' in milliseconds, for tables."""
    return f"{median(values) * 1e3:.1f} ms ({min(values) * 1e3:.1f}-{max(values) * 1e3:.1f})"


def target(name: str, value: float, goal: float, higher_is_better: bool, note: str = "") -> dict:
    """A ratio with its target; `met` says whether it reached it."""
    met = value >= goal if higher_is_better else value <= goal
    return {"name": name, "value": round(value, 3), "target": f"{'>=' if higher_is_better else '<='} {goal:g}",
            "met": met, "note": note}


def cpu_info() -> dict:
    """Model, cores, clock and the ISA flags that decide the precision and peak-FLOP story."""
    text = pathlib.Path("/proc/cpuinfo").read_text() if os.path.exists("/proc/cpuinfo") else ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")
    return {
        "model": fields.get("model name", platform.processor()),
        "vendor": fields.get("vendor_id", ""),
        "family": int(fields.get("cpu family", "0") or 0),
        "cores": os.cpu_count(),
        "mhz": float(fields.get("cpu MHz", "0") or 0),
        "flags": {flag: flag in flags for flag in wanted},
    }


def load() -> str:
    """`uptime`'s load averages (1, 5, 15 min) on this 2-core machine."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def versions() -> dict:
    """Versions of the packages whose speed is measured (imported lazily: some sections avoid TensorFlow)."""
    import importlib.metadata as metadata

    found = {"python": platform.python_version()}
    for package in ("tensorflow", "keras", "numpy", "wfdb", "scipy", "aiohttp"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        found["commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                         capture_output=True, text=True, timeout=10).stdout.strip()
    return found


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Swallows stdout (Keras progress bars) while a measured call runs."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield
