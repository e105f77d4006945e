"""What every benchmark records about the machine it ran on: the CPU model, cores, memory,
operating system, Python and the versions of the packages measured. benchmarks/run.py and
benchmarks/e2e/run.py both report it (each adds what only it measures), so that their result
files describe a machine the same way."""

from __future__ import annotations

import datetime as _dt
import os
import platform
from importlib.metadata import PackageNotFoundError, version


def package_version(name: str) -> str | None:
    """The installed version of the distribution `name`, or None."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _proc_field(path: str, prefix: str) -> str | None:
    """The rest of the first line of a /proc file starting with `prefix`, or None."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line[len(prefix):]
    except OSError:
        pass
    return None


def machine_basics() -> dict:
    """cpu, cores, memory_bytes, os, python and the date of the run (UTC)."""
    model = _proc_field("/proc/cpuinfo", "model name")
    mem = _proc_field("/proc/meminfo", "MemTotal:")
    return {
        "cpu": model.split(":", 1)[1].strip() if model else (platform.processor() or "unknown"),
        "cores": os.cpu_count(),
        "memory_bytes": int(mem.split()[0]) * 1024 if mem else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
