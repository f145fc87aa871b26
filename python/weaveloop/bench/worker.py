"""One benchmark job in a fresh process: ``python -m weaveloop.bench.worker SPEC RESULT``.

SPEC is a JSON object (group, workload, contender, params, settings, timeout); the
outcome is written as JSON to the file RESULT, so stray prints cannot corrupt it.
A crash (e.g. SIGSEGV in the extension) or a hung job dumps every thread's stack to
stderr (faulthandler); an interpreter exit that hangs after the result is written is
cut short with status 3.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import threading
import time
import traceback
from time import perf_counter

EXIT_HUNG = 3
EXIT_GRACE_S = 10.0


def _write(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f)
    os.replace(tmp, path)


def _guard_exit() -> None:
    def kill() -> None:
        time.sleep(EXIT_GRACE_S)
        print(f"worker: interpreter exit hung for {EXIT_GRACE_S:.0f} s", file=sys.stderr)
        faulthandler.dump_traceback(all_threads=True)
        os._exit(EXIT_HUNG)

    threading.Thread(target=kill, name="exit-guard", daemon=True).start()


def run(spec: dict) -> dict:
    from . import groups

    group = groups.get(spec["group"])
    workload = group.workload(spec["workload"])
    t0 = perf_counter()
    try:
        result = group.run_job(workload, spec["contender"], spec["params"], spec["settings"])
        metrics = {m.name: float(result[m.name]) for m in workload.metrics}
        payload = {"ok": True, "metrics": metrics, "extra": result.get("extra", {})}
    except BaseException as exc:  # a failing loop is a result, not a crash
        payload = {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    payload["job_s"] = perf_counter() - t0
    return payload


def main(argv: list[str]) -> int:
    spec_json, result_path = argv
    spec = json.loads(spec_json)
    faulthandler.enable()  # a crash in the extension leaves its Python stack in stderr
    timeout = spec.get("timeout")
    if timeout:
        faulthandler.dump_traceback_later(timeout, exit=True)
    payload = run(spec)
    faulthandler.cancel_dump_traceback_later()
    _write(result_path, payload)
    _guard_exit()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
