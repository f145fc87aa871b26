"""What the numbers were measured on: CPU, memory, Python, versions, git commit.

Recorded in the JSON next to the results; never affects a measurement.
"""

from __future__ import annotations

import os
import platform
import struct
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
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _elf_debug_bytes(path: str) -> int | None:
    """Total size of an ELF64 file's ``.debug_*`` sections (None if not ELF64)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:5] != b"\x7fELF\x02":
        return None
    (table,) = struct.unpack_from("<Q", data, 0x28)
    entry, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    names = struct.unpack_from("<IIQQQQ", data, table + names_index * entry)[4]
    total = 0
    for i in range(count):
        name_at, *_, size = struct.unpack_from("<IIQQQQ", data, table + i * entry)
        name = data[names + name_at : data.index(b"\0", names + name_at)]
        if name.startswith(b".debug_"):
            total += size
    return total


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
        try:
            debug = _elf_debug_bytes(info["module"])
        except (OSError, struct.error, ValueError):
            debug = None
        if debug is not None:
            info["debug_section_bytes"] = debug
            info["looks_like_debug_build"] = debug > 1_000_000
    return info


def build_warnings(before: dict[str, Any], after: dict[str, Any] | None = None) -> list[str]:
    """What a reader must know about the weaveloop build the numbers came from."""
    warnings = []
    if before.get("looks_like_debug_build"):
        warnings.append(
            "weaveloop's extension carries debug info: a debug build, its numbers mean "
            "nothing (build with `make bench`, a release build)"
        )
    if after and (before.get("mtime"), before.get("size_bytes")) != (
        after.get("mtime"),
        after.get("size_bytes"),
    ):
        warnings.append("weaveloop's extension was rebuilt during the run: results mix two builds")
    return warnings


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
