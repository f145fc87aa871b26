"""What the numbers were measured on: CPU, memory, Python, versions, git commit.

Recorded in the JSON next to the results; never affects a measurement.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def weaveloop_build() -> dict[str, Any]:
    """Where the extension module came from, and its build profile if it says."""
    try:
        from weaveloop import _core
    except Exception as exc:
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {"importable": True, "module": getattr(_core, "__file__", None)}
    for attr in ("BUILD_PROFILE", "build_profile", "__build__", "DEBUG_BUILD"):
        if hasattr(_core, attr):
            info["profile"] = getattr(_core, attr)
    if info["module"]:
        st = os.stat(info["module"])
        info.update(size_bytes=st.st_size, mtime=st.st_mtime)
    return info


def describe(versions: dict[str, dict[str, str | None]]) -> dict[str, Any]:
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except Exception:
        memory = None
    package = Path(__file__).resolve().parents[1]
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory,
        "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "weaveloop_build": weaveloop_build(),
        "git_commit": _git_commit(package),
        "env": {k: v for k, v in os.environ.items() if k.startswith("PYTHONASYNCIO")},
    }
