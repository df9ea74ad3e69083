"""Limits against the real sidecar: per-workspace rate limit (RetryInfo), max message size,
concurrency cap, and bounded memory under a flood of large requests (a sidecar subprocess)."""

from __future__ import annotations

import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from certus.sidecar.protos import pb, pb_grpc
from tests.conftest import RunningSidecar, make_config, start_sidecar

RATE_RPS = 0.5
BURST = 2

CONTEXT = ["The Normans gave their name to Normandy, a region in France."]


def request(workspace_id: str, **kw: Any) -> pb.EvaluateRequest:
    base: dict[str, Any] = dict(
        workspace_id=workspace_id,
        query="Who gave their name to Normandy?",
        response="The Normans gave their name to Normandy.",
        context=CONTEXT,
    )
    base.update(kw)
    return pb.EvaluateRequest(**base)


def fresh_workspace() -> str:
    return "ws-" + uuid.uuid4().hex[:12]


def retry_delay_ms(err: grpc.RpcError) -> int:
    status = rpc_status.from_call(err)
    assert status is not None, "no google.rpc.Status in the trailers"
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return int(info.retry_delay.ToMilliseconds())
    raise AssertionError("no google.rpc.RetryInfo detail")


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[RunningSidecar]:
    cfg = make_config(tmp_path_factory.mktemp("limits"), auth={"rate_limit_rps": RATE_RPS, "rate_limit_burst": BURST})
    running = start_sidecar(cfg, encoder=encoder)
    yield running
    running.stop()


def call_until_refused(fn: Any, *args: Any, attempts: int = 8, **kw: Any) -> tuple[int, grpc.RpcError]:
    """Call until RESOURCE_EXHAUSTED; returns (calls admitted first, the refusal)."""
    for admitted in range(attempts):
        try:
            fn(*args, **kw)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            return admitted, exc
    raise AssertionError(f"no refusal in {attempts} calls at {RATE_RPS}/s burst {BURST}")


# -- rate limit ----------------------------------------------------------------------------------


def test_rate_limit_refuses_with_retry_info(limited: RunningSidecar) -> None:
    ws = fresh_workspace()
    dropped = limited.app.access.limiter.stats().dropped
    admitted, err = call_until_refused(limited.stub.Evaluate, request(ws), timeout=60)
    assert admitted >= BURST  # a full bucket admits a burst
    delay = retry_delay_ms(err)
    assert 0 < delay <= 1000 / RATE_RPS  # at most the time one token takes to come back
    assert "rate limit" in (err.details() or "") and ws in (err.details() or "")
    assert limited.app.access.limiter.stats().dropped == dropped + 1
    assert limited.app.access.limiter.dropped_by_key()[ws] == 1
    # another workspace has its own bucket
    other = limited.stub.Evaluate(request(fresh_workspace()), timeout=60)
    assert other.evidence_id.startswith("sha256:")
    info = limited.stub.GetInfo(pb.GetInfoRequest(), timeout=10)  # GetInfo is not rate-limited
    assert int(info.details["ratelimit.dropped"]) >= 1


def test_waiting_the_advised_delay_is_enough(limited: RunningSidecar) -> None:
    """A refusal takes no token, so a client that honours RetryInfo is admitted next time."""
    measure = pb.MeasureRequest(text1="Normandy is in France.", text2="Normandy is a region of France.")
    for _ in range(2):
        _, err = call_until_refused(limited.stub.Measure, measure, timeout=30)
        time.sleep(retry_delay_ms(err) / 1000.0)
        assert limited.stub.Measure(measure, timeout=30).semantic_score > 0.5


def test_stream_items_over_the_limit_fail_alone(limited: RunningSidecar) -> None:
    ws = fresh_workspace()
    reqs = [request(ws, request_id=f"r{i}", response=f"The Normans gave their name to Normandy ({i}).") for i in range(6)]
    answers = {a.request_id: a for a in limited.stub.EvaluateStream(iter(reqs), timeout=120)}
    assert set(answers) == {f"r{i}" for i in range(6)}
    ok = [a for a in answers.values() if a.WhichOneof("result") == "response"]
    refused = [a for a in answers.values() if a.WhichOneof("result") == "error"]
    assert len(ok) >= BURST and refused
    for a in refused:
        assert a.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
        assert "retry after" in a.error.message


# -- message size --------------------------------------------------------------------------------


def test_oversize_message_is_resource_exhausted_and_server_keeps_serving(limited: RunningSidecar) -> None:
    limit = limited.cfg.server.max_message_bytes
    assert limit == 4 * 1024 * 1024  # the default is what is tested
    call = limited.channel.unary_unary(
        "/certus.evaluate.v1.Evaluator/Evaluate", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    too_big = request(fresh_workspace(), query="q" * limit).SerializeToString()
    assert len(too_big) > limit
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as exc:
            call(too_big, timeout=30)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the largest valid request still fits, and the server is still serving
    biggest = request(fresh_workspace(), query="q" * 10_000, response="r" * 50_000, context=["c" * 10_000] * 50)
    assert biggest.ByteSize() < limit
    resp = limited.stub.Evaluate(biggest, timeout=120)
    assert resp.evidence_id.startswith("sha256:")


# -- concurrency cap -----------------------------------------------------------------------------


class OpenStream:
    """An EvaluateStream held open by the client (its request iterator blocks until closed)."""

    def __init__(self, stub: Any, workspace_id: str) -> None:
        self._q: queue.Queue[Any] = queue.Queue()
        self.call = stub.EvaluateStream(iter(self._q.get, None), timeout=120)
        self._q.put(request(workspace_id, request_id="first"))
        assert next(self.call).request_id == "first"  # the server is now running this RPC

    def close(self) -> None:
        self._q.put(None)
        list(self.call)


def test_concurrency_cap_refuses_beyond_max_concurrent_rpcs(tmp_path: Path, encoder: Any) -> None:
    running = start_sidecar(make_config(tmp_path, server={"max_concurrent_rpcs": 2}), encoder=encoder)
    try:
        streams = [OpenStream(running.stub, "acme") for _ in range(2)]
        with pytest.raises(grpc.RpcError) as exc:
            running.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for s in streams:
            s.close()
        for _ in range(50):  # the server releases the slots as the streams finish
            try:
                running.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                time.sleep(0.1)
        else:
            raise AssertionError("the server never admitted another call")
    finally:
        running.stop()


def test_max_concurrent_streams_queues_calls_on_a_busy_connection(tmp_path: Path, encoder: Any) -> None:
    running = start_sidecar(make_config(tmp_path, server={"max_concurrent_streams": 1}), encoder=encoder)
    try:
        stream = OpenStream(running.stub, "acme")  # takes the connection's only stream
        with pytest.raises(grpc.RpcError) as exc:  # queued behind it on this connection, never sent
            running.stub.GetInfo(pb.GetInfoRequest(), timeout=1)
        assert exc.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        own_connection = [("grpc.use_local_subchannel_pool", 1)]  # not the process-wide shared one
        with grpc.insecure_channel(running.target, options=own_connection) as other:  # its own stream
            assert len(pb_grpc.EvaluatorStub(other).GetInfo(pb.GetInfoRequest(), timeout=10).public_key) == 32
        stream.close()
        assert len(running.stub.GetInfo(pb.GetInfoRequest(), timeout=10).public_key) == 32
    finally:
        running.stop()


# -- flood ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flood_of_large_requests_keeps_memory_bounded_and_returns_to_baseline(model_dir: Path) -> None:
    from certus.sidecar.loadgen import start_local_sidecar
    from tests.benchmarks.bench_flood import EXPECTED, MAX_MESSAGE_BYTES, measured_flood, settle_rss, sidecar_env

    concurrency, requests = 32, 400
    env = sidecar_env()
    env["CERTUS_MEMORY_RECLAIM_S"] = "2"
    env["CERTUS_MEMORY_RECLAIM_GROWTH_MIB"] = "32"  # below the tolerance asserted below
    proc, target, _home = start_local_sidecar(env)
    try:
        baseline, peak, res = measured_flood(proc.pid, target, concurrency, requests, seconds=60)
        assert res.sent == requests
        assert res.unexpected == []
        assert {k: sum(c.values()) for k, c in res.codes.items()} == {k: requests // len(EXPECTED) for k in EXPECTED}
        # bounded while it lasted: well under concurrency x max message x 4 copies
        assert peak - baseline < concurrency * MAX_MESSAGE_BYTES * 4 // 1024
        # and handed back afterwards (the reclaimer checks every 2 s; it runs once RSS stops rising)
        # measured with the PII worker in its own process (baseline ~260 MiB): settles 20-51 MiB over
        # the baseline with the reclaimer (fragmentation decides where), 82 MiB without it
        after = settle_rss(proc.pid, baseline + 64 * 1024, max_wait_s=20)
        assert after <= baseline + 64 * 1024, f"RSS {after} KiB after the flood vs baseline {baseline} KiB"
        assert proc.poll() is None
        with grpc.insecure_channel(target) as ch:
            assert health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
            resp = pb_grpc.EvaluatorStub(ch).Evaluate(request("after-flood"), timeout=60)
            assert resp.evidence_id.startswith("sha256:")
    finally:
        proc.terminate()
        proc.wait(30)
