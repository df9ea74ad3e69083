"""Modes, timeouts and degradation end to end: the real server on a free port, the real ONNX model,
the real guardrails and the real evidence log, called through the generated stubs.

Faults are injected into REAL components: an encoder wrapper that delegates to the real
OnnxEncoder but can stall (a gate), sleep first (slow) or raise; a wrapper around the real
GuardrailSuite whose ``scan`` raises. Every skipped answer is checked in the evidence log (outcome,
skip_reason) and the log verifies against the public key the server publishes in GetInfo.

Assertions are about outcomes only: a fault is always far beyond the limit it is meant to trip
(a 1.5 s stall against a 200 ms limit) and far inside the limits it must not trip (30 s, 60 s).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Sequence

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.evidence.verify import verify_log
from certus.sidecar.protos import pb
from certus.sidecar.signing import VerifyKey
from tests.conftest import RunningSidecar, make_config, start_sidecar, write_manifest

SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
WAIT_S = 30.0  # upper bound of every poll; never reached when things work

CONTEXT = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who swore fealty to King Charles III.",
    "Questions about the history of Normandy can be sent to the archive at history@normandy-archive.org.",
]
FAITHFUL = "The Normans gave their name to Normandy, a region in France."
UNFAITHFUL = "The Normans came from Portugal in 1492. They invented the printing press."
WITH_EMAIL = "The Normans gave their name to Normandy. Write to the archive at history@normandy-archive.org."

DEFAULT_THRESHOLDS = {
    "faithfulness": {"min_score": 0.7, "weight": 2.0, "required": True},
    "answer_relevancy": {"min_score": 0.6, "weight": 1.5, "required": True},
    "confidence": {"min_score": 0.7, "weight": 1.0, "required": False},
}
# workspace -> (default_mode, timeout_ms, thresholds)
WORKSPACES: dict[str, tuple[str, int, dict[str, Any]]] = {
    "strict": ("enforce", 30_000, DEFAULT_THRESHOLDS),  # enforce with the default metric policy
    "guarded": ("enforce", 30_000, {}),  # enforce, guardrails only (no metric can fail)
    "off": ("disabled", 30_000, DEFAULT_THRESHOLDS),
    "later": ("async", 30_000, DEFAULT_THRESHOLDS),
    "patient": ("shadow", 30_000, DEFAULT_THRESHOLDS),  # long manifest timeout
    "quick": ("shadow", 200, DEFAULT_THRESHOLDS),  # short manifest timeout
}
VERSION = "2025-06"


# -- fault injection on real components ------------------------------------------------------------


class FaultyEncoder:
    """The real OnnxEncoder behind a switchboard: ``gate`` (cleared = stall until set), ``delay_s``
    (sleep before encoding), ``fail`` (raise instead of encoding). ``busy`` counts calls in progress."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.delay_s = 0.0
        self.fail: Exception | None = None
        self.calls = 0
        self.busy = 0
        self.texts: list[str] = []  # every text encoded, in order
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # dim, max_batch_size, variant, provider, ...
        return getattr(self.real, name)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Any]]:
        with self._lock:
            self.calls += 1
            self.busy += 1
            self.texts.extend(texts)
        try:
            self.entered.set()
            if not self.gate.wait(WAIT_S):
                raise TimeoutError("test gate was never opened")
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            if self.fail is not None:
                raise self.fail
            return self.real.encode_tokens(texts)
        finally:
            with self._lock:
                self.busy -= 1


class RaisingGuardrails:
    """The real GuardrailSuite, whose scan raises after running (a broken evaluator)."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.scans = 0

    def texts_to_embed(self, inp: Any, configs: Any) -> Any:
        return self.real.texts_to_embed(inp, configs)

    def scan(self, inp: Any, configs: Any) -> Any:
        self.scans += 1
        self.real.scan(inp, configs)
        raise RuntimeError("guardrail crashed")


# -- helpers ---------------------------------------------------------------------------------------


def request(workspace: str, tag: str = "", **kw: Any) -> pb.EvaluateRequest:
    """A request; a non-empty ``tag`` makes every text fresh (nothing comes from the embedding cache)."""
    suffix = f" [{tag}]" if tag else ""
    base: dict[str, Any] = dict(
        workspace_id=workspace,
        query="Who gave their name to Normandy?" + suffix,
        response=FAITHFUL,
        context=[c + suffix for c in CONTEXT],
    )
    base.update(kw)
    return pb.EvaluateRequest(**base)


def eventually(fn: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    end = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.02)


def log_record(sc: RunningSidecar, evaluation_id: str) -> Any:
    """The evidence log record of one evaluation (exactly one)."""
    found = [r for r in iter_log(sc.cfg.evidence.log_dir) if r.decision_id == evaluation_id]
    assert len(found) == 1, f"{len(found)} log records for {evaluation_id}"
    return found[0]


def assert_log_verifies(sc: RunningSidecar) -> None:
    """Every record's signature and the whole chain verify with the key GetInfo publishes."""
    info = sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    report = verify_log(sc.cfg.evidence.log_dir, VerifyKey(info.public_key))
    assert report.ok, report.summary()
    assert report.key_ids == (info.key_id,)


def assert_recorded(sc: RunningSidecar, resp: pb.EvaluateResponse, **expected: Any) -> dict[str, Any]:
    rec = log_record(sc, resp.evaluation_id)
    assert rec.evidence_id == resp.evidence_id
    for name, value in expected.items():
        assert rec.payload[name] == value, (name, rec.payload[name], value)
    assert_log_verifies(sc)
    return rec.payload


def assert_skipped(sc: RunningSidecar, resp: pb.EvaluateResponse, reason: str, mode: str) -> None:
    assert resp.skipped is True
    assert resp.skip_reason == reason
    assert resp.outcome == pb.OUTCOME_SKIPPED and resp.passed is False and resp.blocked is False
    assert not resp.metrics and not resp.guardrail_violations and not resp.claims
    assert SHA256.fullmatch(resp.evidence_id)
    payload = assert_recorded(
        sc, resp, outcome="skipped", skipped=True, skip_reason=reason, mode=mode, metrics=[], guardrail_violations=[]
    )
    assert payload["manifest_uri"] == resp.manifest_uri


def retry_delay_ms(err: grpc.RpcError) -> int | None:
    status = rpc_status.from_call(err)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToMilliseconds()
    return None


def wait_until_idle(sc: RunningSidecar, enc: FaultyEncoder) -> None:
    """No encoder call running and nothing queued (a timed-out request's work still finishes)."""
    eventually(lambda: enc.busy == 0 and sc.app.batcher.queue_depth == 0, "the encoder to go idle")
    time.sleep(0.05)  # let guardrail threads collect their last embeddings
    eventually(lambda: enc.busy == 0 and sc.app.batcher.queue_depth == 0, "the encoder to go idle")


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faulty(encoder: Any) -> FaultyEncoder:
    return FaultyEncoder(encoder)


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory, faulty: FaultyEncoder) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("modes")
    cfg = make_config(tmp)
    for ws, (mode, timeout_ms, thresholds) in WORKSPACES.items():
        write_manifest(cfg.manifests.manifest_dir, ws, VERSION, default_mode=mode, timeout_ms=timeout_ms, thresholds=thresholds)
    running = start_sidecar(cfg, encoder=faulty)
    assert running.app.manifests.health_details() == {}
    yield running
    faulty.gate.set()
    running.stop()


@pytest.fixture
def quiet(sc: RunningSidecar, faulty: FaultyEncoder) -> Iterator[FaultyEncoder]:
    """The module's encoder, healthy before and after the test (faults switched off, work drained)."""
    wait_until_idle(sc, faulty)
    yield faulty
    faulty.gate.set()
    faulty.delay_s = 0.0
    faulty.fail = None
    wait_until_idle(sc, faulty)


def tag() -> str:
    return uuid.uuid4().hex[:12]


# -- shadow / enforce ------------------------------------------------------------------------------


def test_shadow_never_blocks_and_records_the_outcome(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    # workspace "acme" has no manifest: the embedded default applies (shadow)
    resp = sc.stub.Evaluate(request("acme", response=UNFAITHFUL + " Mail me at jane.doe@example.com."), timeout=60)
    assert resp.mode == pb.EVALUATION_MODE_SHADOW
    assert resp.manifest_uri == "certus://manifests/default/2025-01"
    assert resp.outcome == pb.OUTCOME_FAIL and resp.passed is False
    assert resp.blocked is False and list(resp.block_reasons) == []
    metrics = {m.name: m for m in resp.metrics}
    assert metrics["faithfulness"].value < 0.7 and metrics["faithfulness"].passed is False
    pii = [v for v in resp.guardrail_violations if v.guardrail_type == pb.GUARDRAIL_TYPE_PII]
    assert [v.detector for v in pii] == ["EMAIL_ADDRESS"] and pii[0].blocking is True  # would block in enforce
    payload = assert_recorded(sc, resp, outcome="fail", mode="shadow", blocked=False, skipped=False)
    assert [v["detector"] for v in payload["guardrail_violations"]] == ["EMAIL_ADDRESS"]
    assert {m["name"]: m["passed"] for m in payload["metrics"]}["faithfulness"] is False


def test_enforce_blocks_on_a_blocking_guardrail_violation(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    resp = sc.stub.Evaluate(request("guarded", response=WITH_EMAIL, context=CONTEXT[:1]), timeout=60)
    assert resp.mode == pb.EVALUATION_MODE_ENFORCE
    assert resp.manifest_uri == f"certus://manifests/guarded/{VERSION}"
    assert resp.blocked is True
    assert list(resp.block_reasons) == ["guardrail:pii:EMAIL_ADDRESS"]
    assert resp.outcome == pb.OUTCOME_FAIL
    assert_recorded(sc, resp, outcome="fail", mode="enforce", blocked=True)


def test_enforce_blocks_on_a_failed_required_metric(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    resp = sc.stub.Evaluate(request("strict", response=UNFAITHFUL), timeout=60)
    assert resp.mode == pb.EVALUATION_MODE_ENFORCE
    assert resp.blocked is True
    assert list(resp.block_reasons) == ["metric:answer_relevancy:below_min_score", "metric:faithfulness:below_min_score"]
    assert not resp.guardrail_violations
    assert resp.outcome == pb.OUTCOME_FAIL
    assert_recorded(sc, resp, outcome="fail", mode="enforce", blocked=True)


def test_enforce_lets_a_clean_faithful_answer_through(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    resp = sc.stub.Evaluate(request("strict"), timeout=60)
    assert resp.mode == pb.EVALUATION_MODE_ENFORCE
    assert resp.outcome == pb.OUTCOME_PASS and resp.passed is True
    assert resp.blocked is False and list(resp.block_reasons) == []
    assert {m.name: m.passed for m in resp.metrics if m.HasField("threshold")} == {
        "faithfulness": True,
        "answer_relevancy": True,
        "confidence": True,
    }
    assert_recorded(sc, resp, outcome="pass", mode="enforce", blocked=False)


def test_request_mode_overrides_the_manifest_default(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    # enforce manifest, shadow request: the same failing answer is recorded but not blocked
    shadow = sc.stub.Evaluate(request("strict", response=UNFAITHFUL, mode=pb.EVALUATION_MODE_SHADOW), timeout=60)
    assert shadow.mode == pb.EVALUATION_MODE_SHADOW
    assert shadow.outcome == pb.OUTCOME_FAIL and shadow.blocked is False
    assert_recorded(sc, shadow, mode="shadow", blocked=False)
    # shadow manifest (embedded default), enforce request: blocked
    enforce = sc.stub.Evaluate(request("acme", response=UNFAITHFUL, mode=pb.EVALUATION_MODE_ENFORCE), timeout=60)
    assert enforce.mode == pb.EVALUATION_MODE_ENFORCE
    assert enforce.blocked is True and list(enforce.block_reasons) == ["metric:answer_relevancy:below_min_score", "metric:faithfulness:below_min_score"]
    assert_recorded(sc, enforce, mode="enforce", blocked=True)
    # naming the manifest's own mode changes nothing
    same = sc.stub.Evaluate(request("strict", response=UNFAITHFUL, mode=pb.EVALUATION_MODE_ENFORCE), timeout=60)
    assert same.mode == pb.EVALUATION_MODE_ENFORCE and same.blocked is True


def test_pii_names_ride_the_encoder_run_scoring_makes(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    """The PII head reads the token states of the response's sentences, which scoring encodes as its
    claims: each sentence is encoded once for both, and the head finds the date of birth (high
    severity, so the workspace's default guardrail policy reports it)."""
    from certus.sidecar.scoring import sentence_spans

    t = tag()
    response = f"Maria Garcia moved to Lisbon in March 2019 (ref {t}). She was born on 4 May 1980."
    before = len(quiet.texts)
    resp = sc.stub.Evaluate(request("guarded", t, response=response), timeout=60)
    encoded = quiet.texts[before:]
    sentences = [response[a:b] for a, b in sentence_spans(response)]
    assert len(sentences) == 2 and all(encoded.count(s) == 1 for s in sentences), encoded
    found = {(v.detector, response[v.start : v.end]) for v in resp.guardrail_violations}
    assert ("DATE_OF_BIRTH", "4 May 1980") in found
    assert sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10).details["pii.ner_model"] == "minilm-token-head"


# -- disabled --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "workspace,mode", [("off", pb.EVALUATION_MODE_UNSPECIFIED), ("acme", pb.EVALUATION_MODE_DISABLED)], ids=["manifest", "request"]
)
def test_disabled_scores_nothing_and_is_recorded_as_skipped(
    sc: RunningSidecar, quiet: FaultyEncoder, workspace: str, mode: int
) -> None:
    stats = sc.app.batcher.stats
    calls, encoded, cache_misses = quiet.calls, stats.texts_encoded, sc.app.batcher.cache.misses
    resp = sc.stub.Evaluate(request(workspace, tag(), response=WITH_EMAIL, mode=mode), timeout=60)
    assert resp.mode == pb.EVALUATION_MODE_DISABLED
    assert_skipped(sc, resp, "mode_disabled", "disabled")
    # nothing was embedded, scored or scanned
    assert quiet.calls == calls and stats.texts_encoded == encoded and sc.app.batcher.cache.misses == cache_misses


# -- async -----------------------------------------------------------------------------------------


def get(sc: RunningSidecar, evaluation_id: str, workspace: str) -> pb.GetEvaluationResponse:
    return sc.stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=evaluation_id, workspace_id=workspace), timeout=10)


def wait_completed(sc: RunningSidecar, evaluation_id: str, workspace: str) -> pb.GetEvaluationResponse:
    return eventually(
        lambda: (r := get(sc, evaluation_id, workspace)).status == pb.EVALUATION_STATUS_COMPLETED and r,
        f"evaluation {evaluation_id} to complete",
    )


def assert_not_found(call: Callable[[], Any]) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "workspace,mode", [("later", pb.EVALUATION_MODE_UNSPECIFIED), ("acme", pb.EVALUATION_MODE_ASYNC)], ids=["manifest", "request"]
)
def test_async_answers_at_once_and_get_evaluation_returns_the_signed_result(
    sc: RunningSidecar, quiet: FaultyEncoder, workspace: str, mode: int
) -> None:
    quiet.gate.clear()  # the scoring stalls until the test lets it go
    quiet.entered.clear()
    accepted = sc.stub.Evaluate(
        request(workspace, tag(), response=WITH_EMAIL, mode=mode, timeout_ms=30_000, request_id="r-async"), timeout=60
    )
    assert accepted.status == pb.EVALUATION_STATUS_PENDING
    assert accepted.mode == pb.EVALUATION_MODE_ASYNC
    assert uuid.UUID(accepted.evaluation_id)
    assert accepted.evidence_id == "" and not accepted.metrics and accepted.skipped is False
    assert accepted.outcome == pb.OUTCOME_UNSPECIFIED and accepted.request_id == "r-async"
    eid = accepted.evaluation_id

    assert quiet.entered.wait(WAIT_S)  # it is in the encoder now, held at the gate
    running = get(sc, eid, workspace)
    assert running.status in (pb.EVALUATION_STATUS_PENDING, pb.EVALUATION_STATUS_PROCESSING)
    assert not running.HasField("result")
    assert [r.decision_id for r in iter_log(sc.cfg.evidence.log_dir) if r.decision_id == eid] == []
    assert_not_found(lambda: get(sc, eid, "someone-else"))  # another workspace's id: no existence leak

    quiet.gate.set()
    done = wait_completed(sc, eid, workspace)
    result = done.result
    assert done.estimated_completion_ms == 0
    assert result.evaluation_id == eid and result.status == pb.EVALUATION_STATUS_COMPLETED
    assert result.mode == pb.EVALUATION_MODE_ASYNC and result.skipped is False
    assert SHA256.fullmatch(result.evidence_id)
    assert {"faithfulness", "answer_relevancy", "confidence"} <= {m.name for m in result.metrics}
    # scored as shadow: a blocking PII violation fails the answer but blocks nobody
    assert [v.detector for v in result.guardrail_violations] == ["EMAIL_ADDRESS"]
    assert result.outcome == pb.OUTCOME_FAIL and result.blocked is False
    assert_recorded(sc, result, mode="async", outcome="fail", blocked=False, skipped=False)
    # fetching is idempotent until the result expires
    assert get(sc, eid, workspace).result == result
    assert_not_found(lambda: get(sc, eid, "someone-else"))


def test_get_evaluation_of_an_unknown_id_is_not_found(sc: RunningSidecar) -> None:
    assert_not_found(lambda: get(sc, str(uuid.uuid4()), "later"))


def test_async_table_is_bounded_and_results_expire(tmp_path: Path, encoder: Any) -> None:
    enc = FaultyEncoder(encoder)
    cfg = make_config(
        tmp_path, async_jobs={"max_jobs": 1, "ttl_s": 2.0}, manifests={"default_mode": "async", "default_timeout_ms": 30_000}
    )
    sc = start_sidecar(cfg, encoder=enc)
    try:
        enc.gate.clear()
        first = sc.stub.Evaluate(request("acme", tag()), timeout=60)
        assert first.status == pb.EVALUATION_STATUS_PENDING
        # the table holds one unfinished job: the next one is refused, with a retry hint
        with pytest.raises(grpc.RpcError) as exc:
            sc.stub.Evaluate(request("acme", tag()), timeout=60)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "async job table full" in exc.value.details()
        delay = retry_delay_ms(exc.value)
        assert delay is not None and 0 < delay <= 2000  # when the first job expires
        enc.gate.set()
        wait_completed(sc, first.evaluation_id, "acme")  # fetched: its slot may now go to a new job
        second = sc.stub.Evaluate(request("acme", tag()), timeout=60)
        assert second.status == pb.EVALUATION_STATUS_PENDING
        assert_not_found(lambda: get(sc, first.evaluation_id, "acme"))  # gave its slot up
        wait_completed(sc, second.evaluation_id, "acme")
        # expiry: ttl_s after completion the result is gone
        time.sleep(cfg.async_jobs.ttl_s + 0.2)
        assert_not_found(lambda: get(sc, second.evaluation_id, "acme"))
        # both evaluations were signed and logged
        for r in (first, second):
            assert log_record(sc, r.evaluation_id).payload["mode"] == "async"
        assert_log_verifies(sc)
        assert sc.app.jobs.evicted_fetched_total == 1 and sc.app.jobs.rejected_total == 1
    finally:
        enc.gate.set()
        sc.stop()


# -- timeouts and degradation ----------------------------------------------------------------------

# (workspace, request timeout_ms, client deadline s, encoder stall s): exactly one limit is short
TIMEOUT_CASES = {
    "manifest_timeout_ms": ("quick", None, 60.0, 1.5),  # manifest 200 ms
    "request_timeout_ms": ("patient", 200, 60.0, 1.5),  # manifest 30 s
    "grpc_deadline": ("patient", None, 2.0, 4.0),  # manifest 30 s; answer comes before the deadline
}


@pytest.mark.parametrize("case", list(TIMEOUT_CASES))
def test_each_limit_turns_a_slow_encoder_into_a_signed_timeout_skip(
    sc: RunningSidecar, quiet: FaultyEncoder, case: str
) -> None:
    workspace, timeout_ms, deadline_s, stall_s = TIMEOUT_CASES[case]
    kw: dict[str, Any] = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
    quiet.delay_s = stall_s
    resp = sc.stub.Evaluate(request(workspace, tag(), **kw), timeout=deadline_s)
    quiet.delay_s = 0.0
    assert resp.mode == pb.EVALUATION_MODE_SHADOW
    assert resp.manifest_uri == f"certus://manifests/{workspace}/{VERSION}"
    assert_skipped(sc, resp, "evaluator_timeout", "shadow")


def test_a_slow_encoder_within_every_limit_is_not_skipped(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    """The control for the cases above: the same stall under long limits completes normally."""
    quiet.delay_s = 0.5
    resp = sc.stub.Evaluate(request("patient", tag()), timeout=60)
    assert resp.skipped is False and resp.outcome == pb.OUTCOME_PASS
    assert_recorded(sc, resp, skipped=False, outcome="pass")


@pytest.mark.parametrize("fault", ["guardrail_raises", "encoder_raises"])
def test_a_failing_evaluator_is_a_signed_error_skip(sc: RunningSidecar, quiet: FaultyEncoder, fault: str) -> None:
    pipeline = sc.app.pipeline
    real = pipeline.guardrails
    broken = RaisingGuardrails(real)
    if fault == "guardrail_raises":
        pipeline.guardrails = broken
    else:
        quiet.fail = RuntimeError("onnxruntime exploded")
    try:
        resp = sc.stub.Evaluate(request("strict", tag()), timeout=60)
    finally:
        pipeline.guardrails = real
        quiet.fail = None
    assert resp.mode == pb.EVALUATION_MODE_ENFORCE
    assert_skipped(sc, resp, "evaluator_error", "enforce")
    if fault == "guardrail_raises":
        assert broken.scans == 1
    # the sidecar keeps working
    ok = sc.stub.Evaluate(request("strict", tag()), timeout=60)
    assert ok.skipped is False and ok.outcome == pb.OUTCOME_PASS


def test_async_jobs_degrade_into_signed_skips_too(sc: RunningSidecar, quiet: FaultyEncoder) -> None:
    """An async job whose scoring outlives its timeout completes as a signed evaluator_timeout skip."""
    quiet.delay_s = 1.5
    accepted = sc.stub.Evaluate(request("acme", tag(), mode=pb.EVALUATION_MODE_ASYNC, timeout_ms=200), timeout=60)
    assert accepted.status == pb.EVALUATION_STATUS_PENDING
    done = wait_completed(sc, accepted.evaluation_id, "acme")
    assert done.result.mode == pb.EVALUATION_MODE_ASYNC
    assert_skipped(sc, done.result, "evaluator_timeout", "async")


def test_a_full_encoder_queue_is_a_status_when_sync_and_a_signed_skip_when_async(tmp_path: Path, encoder: Any) -> None:
    """More new texts than the queue holds: a synchronous caller gets RESOURCE_EXHAUSTED with a retry
    hint (it can act on it); an async job, which nobody waits on, completes as a signed ``overloaded``."""
    cfg = make_config(tmp_path, batcher={"max_queue": 12})
    sc = start_sidecar(cfg, encoder=encoder)
    try:
        t = tag()
        big = dict(context=[f"Context chunk number {i} about Normandy [{t}]." for i in range(20)])
        with pytest.raises(grpc.RpcError) as exc:
            sc.stub.Evaluate(request("acme", t, **big), timeout=60)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "embedding queue is full" in exc.value.details()
        assert retry_delay_ms(exc.value) is not None
        accepted = sc.stub.Evaluate(request("acme", t, mode=pb.EVALUATION_MODE_ASYNC, **big), timeout=60)
        done = wait_completed(sc, accepted.evaluation_id, "acme")
        assert_skipped(sc, done.result, "overloaded", "async")
        # a request the queue can hold is served as usual
        ok = sc.stub.Evaluate(request("acme", tag()), timeout=60)
        assert ok.skipped is False and SHA256.fullmatch(ok.evidence_id)
    finally:
        sc.stop()


def test_an_overloaded_encoder_queue_is_a_signed_overloaded_skip(tmp_path: Path, encoder: Any) -> None:
    """Estimated queue wait beyond the deadline: skipped ``overloaded`` at once, while a request with
    a deadline the queue can meet is accepted and completes."""
    enc = FaultyEncoder(encoder)
    enc.delay_s = 1.0  # every encoder call is slow, from warm-up on: the observed rate is a few texts/s
    cfg = make_config(tmp_path, manifests={"default_timeout_ms": 30_000})
    sc = start_sidecar(cfg, encoder=enc)
    results: dict[str, Any] = {}

    def call(name: str, req: pb.EvaluateRequest) -> None:
        try:
            results[name] = sc.stub.Evaluate(req, timeout=60)
        except grpc.RpcError as exc:  # reported by the assertions below
            results[name] = exc

    try:
        enc.gate.clear()
        enc.entered.clear()
        first = threading.Thread(target=call, args=("first", request("acme", tag())))
        first.start()
        assert enc.entered.wait(WAIT_S)  # its texts are in the encoder, held at the gate
        wait_s = sc.app.batcher.estimated_wait_s()
        assert wait_s > 0.1  # the queue cannot serve a 100 ms request ...
        late = sc.stub.Evaluate(request("acme", tag(), timeout_ms=100), timeout=60)
        assert_skipped(sc, late, "overloaded", "shadow")
        patient = threading.Thread(target=call, args=("patient", request("acme", tag(), timeout_ms=30_000)))
        patient.start()  # ... but can serve a 30 s one
        enc.delay_s = 0.0
        enc.gate.set()
        first.join(WAIT_S)
        patient.join(WAIT_S)
        for name in ("first", "patient"):
            resp = results[name]
            assert isinstance(resp, pb.EvaluateResponse), resp
            assert resp.skipped is False and SHA256.fullmatch(resp.evidence_id)
        assert_log_verifies(sc)
    finally:
        enc.gate.set()
        enc.delay_s = 0.0
        sc.stop()
