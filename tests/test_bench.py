"""The benchmark tools run end to end and record what they measured.

Smoke tests of the harness only: tiny sizes, one run, and no assertion on any speed
(a benchmark is never a timed test). They check that each group's jobs run in their
own processes and land in the JSON, that the lag workload's no-lock control runs, and
that the floors tool measures both of its floors.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from weaveloop.bench import floors


def _bench(tmp_path, *args: str) -> dict:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "weaveloop.bench", "--quick", "--runs", "1", "--out", str(out)]
        + list(args),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = out.glob("bench-*.json")
    if importlib.util.find_spec("matplotlib") is not None:
        assert list(out.glob("bench-*.png")), "no chart written"
    else:
        assert "matplotlib is not installed" in proc.stdout
    return json.loads(report.read_text())


def _runs(result: dict, group: str, workload: str, contender: str) -> list[dict]:
    return result["groups"][group]["workloads"][workload]["results"][contender]["runs"]


def test_loop_group_runs_each_loop_and_records_every_metric(tmp_path):
    result = _bench(tmp_path, "--only", "call_soon,threadsafe_1", "--loops", "asyncio,weaveloop")
    for loop in ("asyncio", "weaveloop"):
        (run,) = _runs(result, "loops", "call_soon", loop)
        assert run["ok"] and run["metrics"]["throughput"] > 0
        (run,) = _runs(result, "loops", "threadsafe_1", loop)
        assert run["ok"]
        assert set(run["metrics"]) == {"throughput", "p50", "p99"}
        assert 0 < run["metrics"]["p50"] <= run["metrics"]["p99"]
    (run,) = _runs(result, "loops", "call_soon", "weaveloop")
    assert run["extra"]["loop_type"] == "weaveloop._loop.Loop"


def test_socket_group_runs_each_api_on_each_loop(tmp_path):
    workloads = "tcp_proto_1k,tcp_streams_1k,tcp_sock_1k,tls_streams_1k,udp_echo_1k"
    result = _bench(tmp_path, "--only", workloads, "--loops", "asyncio,weaveloop")
    for workload in workloads.split(","):
        for loop in ("asyncio", "weaveloop"):
            (run,) = _runs(result, "sockets", workload, loop)
            assert run["ok"], run
            assert run["metrics"]["throughput"] > 0


def test_lock_lag_runs_the_no_lock_control_beside_the_lock(tmp_path):
    result = _bench(tmp_path, "--only", "lock_lag", "--libs", "weaveloop,no-lock")
    for lib in ("weaveloop", "no-lock"):
        (run,) = _runs(result, "sync", "lock_lag", lib)
        assert run["ok"], run
        assert 0 <= run["metrics"]["p99"] <= run["metrics"]["worst"]
        # Both ran the same holder thread and waiting coroutine.
        assert run["extra"]["slices"] > 0 and run["extra"]["coroutine_acquisitions"] > 0


def test_floors_measure_timer_jitter_and_the_cross_thread_ceiling(capsys):
    jitter = floors.timer_jitter(0.001, 0.05)
    assert jitter["samples"] > 0
    assert jitter["p99_ms"] <= jitter["worst_ms"]
    assert floors.cross_thread_ceiling(1000, with_context=False) > 0
    assert floors.cross_thread_ceiling(1000, with_context=True) > 0
    floors.main(["--quick", "--runs", "1"])
    out = capsys.readouterr().out
    assert "timer jitter" in out
    assert out.count("cross-thread ceiling") == 2
