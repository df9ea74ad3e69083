"""Metrics: bounded workspace labels, isolated registries, exact observations, the HTTP endpoint,
and the encoder wrapper (with the real ONNX encoder)."""

from __future__ import annotations

import threading
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from certus.sidecar.domain import GuardrailType, GuardrailViolation, MetricScore, Severity
from certus.sidecar.metrics import (
    OTHER,
    InstrumentedEncoder,
    Metrics,
    MetricsServer,
    WorkspaceLabels,
    is_loopback,
    parse_address,
)


def samples(m: Metrics) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(m.exposition().decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def get(m: Metrics, name: str, **labels: str) -> float:
    return samples(m).get((name, frozenset(labels.items())), 0.0)


def test_workspace_labels_are_capped_known_ones_always_kept() -> None:
    labels = WorkspaceLabels(2, known=lambda ws: ws.startswith("m-"))
    assert [labels(ws) for ws in ("a", "b", "c", "a", "d")] == ["a", "b", OTHER, "a", OTHER]
    assert labels("m-1") == "m-1" and labels("m-2") == "m-2"  # workspaces with a manifest
    assert labels("b") == "b" and labels("e") == OTHER


def test_workspace_labels_under_concurrency_never_exceed_the_cap() -> None:
    labels = WorkspaceLabels(10)
    seen: list[str] = []
    lock = threading.Lock()

    def worker(base: int) -> None:
        got = [labels(f"ws-{base}-{i}") for i in range(50)]
        with lock:
            seen.extend(got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen) - {OTHER}) == 10
    assert seen.count(OTHER) == 8 * 50 - 10


def test_registries_are_isolated() -> None:
    a, b = Metrics(), Metrics()  # the same names twice: fine, no process-global registry
    a.observe_evaluation("acme", "shadow", "pass", 0.02)
    assert get(a, "certus_evaluate_requests_total", workspace_id="acme", mode="shadow", outcome="pass") == 1
    assert get(b, "certus_evaluate_requests_total", workspace_id="acme", mode="shadow", outcome="pass") == 0


def test_observations_are_exact() -> None:
    m = Metrics(max_workspaces=1)
    m.observe_evaluation("acme", "enforce", "fail", 0.2)
    m.observe_evaluation("acme", "enforce", "skipped", 0.004, skip_reason="evaluator_timeout")
    m.observe_evaluation("zeta", "shadow", "pass", 0.03)  # beyond the cap
    m.observe_verdict(
        "acme",
        [MetricScore("faithfulness", 0.25), MetricScore("faithfulness", 0.75), MetricScore("grounding", 1.0)],
        [
            GuardrailViolation(GuardrailType.PII, Severity.HIGH, 0.9, "sha256:" + "0" * 64, 0, 5, "response", "presidio"),
            GuardrailViolation(GuardrailType.PII, Severity.HIGH, 0.8, "sha256:" + "1" * 64, 9, 12, "response", "presidio"),
        ],
    )
    m.observe_evidence_append(0.003)
    m.observe_batch(7, 0.012)
    m.observe_rpc("Evaluate", "INVALID_ARGUMENT")
    s = samples(m)

    def v(name: str, **labels: str) -> float:
        return s.get((name, frozenset(labels.items())), 0.0)

    assert v("certus_evaluate_requests_total", workspace_id="acme", mode="enforce", outcome="fail") == 1
    assert v("certus_evaluate_requests_total", workspace_id=OTHER, mode="shadow", outcome="pass") == 1
    assert v("certus_evaluate_skipped_total", workspace_id="acme", reason="evaluator_timeout") == 1
    assert v("certus_evaluate_request_duration_seconds_count", workspace_id="acme", mode="enforce") == 2
    assert v("certus_evaluate_request_duration_seconds_sum", workspace_id="acme", mode="enforce") == pytest.approx(0.204)
    assert v("certus_evaluate_request_duration_seconds_bucket", workspace_id="acme", mode="enforce", le="0.005") == 1
    assert v("certus_evaluate_request_duration_seconds_bucket", workspace_id="acme", mode="enforce", le="0.1") == 1
    assert v("certus_evaluate_request_duration_seconds_bucket", workspace_id="acme", mode="enforce", le="0.25") == 2
    faith = dict(workspace_id="acme", metric_name="faithfulness", framework="certus")
    assert v("certus_evaluate_metric_score_count", **faith) == 2
    assert v("certus_evaluate_metric_score_sum", **faith) == 1.0
    assert v("certus_evaluate_metric_score_bucket", le="0.3", **faith) == 1
    assert v("certus_evaluate_guardrail_violations_total", workspace_id="acme", guardrail_type="pii", severity="high") == 2
    assert v("certus_evaluate_evidence_append_seconds_count") == 1
    assert v("certus_evaluate_encoder_batch_size_sum") == 7
    assert v("certus_evaluate_encoder_batch_size_bucket", le="8.0") == 1
    assert v("certus_evaluate_encoder_batch_size_bucket", le="4.0") == 0
    assert v("certus_evaluate_grpc_requests_total", method="Evaluate", code="INVALID_ARGUMENT") == 1


@pytest.mark.parametrize(
    "address,expected",
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("[::1]:0", ("::1", 0)), ("localhost:80", ("localhost", 80))],
)
def test_parse_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9464", ":9464", "host:", "host:port", "host:70000"])
def test_bad_address_names_the_setting(address: str) -> None:
    with pytest.raises(ValueError, match="CERTUS_METRICS_ADDRESS"):
        parse_address(address)


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")


def test_endpoint_serves_prometheus_text_and_stops() -> None:
    m = Metrics()
    m.observe_evaluation("acme", "shadow", "pass", 0.01)
    server = MetricsServer.start("127.0.0.1:0", m.registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as resp:
            body = resp.read().decode()
            assert resp.headers["Content-Type"].startswith("text/plain")
    finally:
        server.stop()
    assert 'certus_evaluate_requests_total{mode="shadow",outcome="pass",workspace_id="acme"} 1.0' in body
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5)


def test_instrumented_encoder_observes_each_call(encoder: Any) -> None:
    m = Metrics()
    wrapped = InstrumentedEncoder(encoder, m)
    assert wrapped.dim == encoder.dim and wrapped.max_batch_size == encoder.max_batch_size
    out = wrapped.encode(["one text", "another text", "a third"])
    assert out.shape == (3, encoder.dim)
    wrapped.encode(["alone"])
    assert get(m, "certus_evaluate_encoder_batch_size_count") == 2
    assert get(m, "certus_evaluate_encoder_batch_size_sum") == 4
    assert get(m, "certus_evaluate_encoder_batch_seconds_count") == 2
    with pytest.raises(Exception):
        wrapped.encode(None)  # type: ignore[arg-type]
    assert get(m, "certus_evaluate_encoder_errors_total") == 1
    assert get(m, "certus_evaluate_encoder_batch_size_count") == 2
