"""Every benchmark harness in ``tests/benchmarks`` still runs end to end, with tiny bounds.

CI never runs the benchmarks at full length, so a harness can break unseen: ``bench_soak.py`` did
(the load loop came to take a list of stubs, and it still passed one). Each one here runs as a user
runs it (``python tests/benchmarks/bench_X.py ...``, from outside the repository), must exit 0 and
print the line its result is read from. Nothing is timed: the figures are not checked, only that
the harness measured something. ``bench_encoder.py`` is left out: it compares with PyTorch and so
runs in the export environment (``.venv-export``), not the serving one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_data

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# (harness, arguments ("{tmp}": the test's own directory), a line of its output that holds the
# result, needs ../shared/data)
HARNESSES = [
    ("bench_evidence.py", ["--records", "50", "--concurrency", "4", "--wait-ms", "0", "--read", "600", "--dir", "{tmp}"],
     "skip the lines before them unparsed", False),
    ("bench_kernels.py", ["--seconds", "0.01"], "split_sentences, per paragraph", False),
    ("bench_dashboard.py", ["--records", "2000", "--dir", "{tmp}"], "overview warm", False),
    ("bench_telemetry.py", ["--requests", "20", "--rounds", "1"], "spans received by the OTLP collector", False),
    ("bench_trace.py", ["--calls", "100", "--paced-calls", "50", "--rounds", "1"], "worst p99 overhead", False),
    ("bench_sidecar.py", ["--duration", "1", "--variant", "int8", "--concurrency", "1", "--rates", "5"],
     "| front-ends | load |", False),
    ("bench_overload.py", ["--duration", "1", "--factors", "1", "--configs", "0:0"], "admission off: closed loop", False),
    ("bench_flood.py", ["--concurrency", "8", "--requests", "50", "--seconds", "3", "--settle", "2", "--streams", "0"],
     "server alive: True", False),
    ("bench_fuzz.py", ["--messages", "200", "--stream-rounds", "1", "--budget-s", "60", "--settle-s", "5"],
     "failures: 0", False),
    ("bench_soak.py", ["--minutes", "0.1", "--window-s", "3", "--capacity-s", "2"], '"verify_ok": true', False),
    ("bench_cpu.py", ["--requests", "5"], "CPU outside the encoder per request", True),
    ("bench_verifier.py", ["--requests", "5"], "token alignment, all in", True),
    ("bench_pii_pipeline.py", ["--limit", "20"], "texts whose findings differ (type, span or score): 0", True),
    ("bench_guardrails.py", ["--latency-requests", "3", "--variant", "int8"], "micro, default entity set", True),
    ("bench_floor.py", ["--threads", "2,1", "--rounds", "1", "--requests", "30", "--warmup", "5"],
     "| 1 | 8 |", False),
]
# harnesses that drive a native tool (Debian packages .ci/run installs); skipped with a message without it
NEEDS_TOOL = {"bench_floor.py": "h2load"}


def test_every_harness_is_listed() -> None:
    listed = {h[0] for h in HARNESSES} | {"bench_encoder.py"}
    assert {p.name for p in BENCH.glob("bench_*.py")} == listed


@pytest.mark.parametrize("harness,args,marker,needs_data", HARNESSES, ids=[h[0] for h in HARNESSES])
def test_harness_runs(harness: str, args: list[str], marker: str, needs_data: bool, tmp_path: Path) -> None:
    if needs_data:
        shared_data("halueval", "qa_dev.jsonl")
    tool = NEEDS_TOOL.get(harness)
    if tool is not None and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian nghttp2-client; .ci/run installs it)")
    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    proc = subprocess.run(
        [sys.executable, str(BENCH / harness), *(a.format(tmp=tmp_path / "work") for a in args)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{harness} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert marker in proc.stdout, f"{harness} did not print {marker!r}:\n{proc.stdout[-3000:]}"
