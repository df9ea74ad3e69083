"""Admission on a real sidecar: over the measured service rate, calls are answered at once with a
signed ``overloaded`` skip that is in the evidence log; within it they are scored; the limit and
the refusals show in GetInfo and in the metrics. Off (target 0), the same burst is all scored."""

from __future__ import annotations

import concurrent.futures
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.protos import pb
from tests.conftest import free_port, make_config, start_sidecar


def _request() -> Any:
    return pb.EvaluateRequest(
        workspace_id="acme",
        query=f"What did the report say? {uuid.uuid4().hex}",
        response="Revenue grew 8% to $89.5B in Q4. The report was published in January.",
        context=["Apple reported Q4 revenue of $89.5B, up 8% year over year.", "The report came out in January."],
    )


def _burst(stub: Any, n: int) -> list[Any]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: stub.Evaluate(_request(), timeout=60), range(n)))


def test_a_burst_over_the_limit_gets_signed_overloaded_skips(tmp_path: Path, encoder: Any) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    cfg = make_config(tmp_path, server={"admission_target_ms": 1.0, "admission_min_in_flight": 2, "metrics_address": metrics})
    sc = start_sidecar(cfg, encoder=encoder)
    try:
        answers = _burst(sc.stub, 16)
        details = dict(sc.stub.GetInfo(pb.GetInfoRequest(), timeout=30).details)
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    finally:
        sc.stop()
    skipped = [a for a in answers if a.skipped]
    scored = [a for a in answers if not a.skipped]
    assert scored and skipped, [a.skip_reason for a in answers]  # at most 2 in flight at a time
    assert {a.skip_reason for a in skipped} == {"overloaded"}
    assert int(details["admission.refused"]) == len(skipped) and details["admission.target_ms"] == "1.0"
    assert int(details["admission.admitted"]) >= len(scored)
    refused_line = next(line for line in text.splitlines() if line.startswith("certus_evaluate_admission_refused_total "))
    assert float(refused_line.split()[-1]) == len(skipped)
    logged = {r.evidence_id: r.payload for r in iter_log(tmp_path / "evidence")}
    for a in skipped:  # every refusal is a signed decision in the log
        assert logged[a.evidence_id]["outcome"] == "skipped" and logged[a.evidence_id]["skip_reason"] == "overloaded"


def test_with_admission_off_the_same_burst_is_scored(tmp_path: Path, encoder: Any) -> None:
    sc = start_sidecar(make_config(tmp_path, server={"admission_target_ms": 0.0}), encoder=encoder)
    try:
        answers = _burst(sc.stub, 16)
        details = dict(sc.stub.GetInfo(pb.GetInfoRequest(), timeout=30).details)
    finally:
        sc.stop()
    assert not any(a.skipped for a in answers)
    assert details["admission.refused"] == "0"
