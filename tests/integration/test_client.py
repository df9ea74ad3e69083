"""The Python clients against the real sidecar: normal calls, server down, breaker, timeouts,
``@trace`` forwarding, and offline numbers equal to online ones."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from certus.client.aio import AsyncSidecarClient
from certus.client.sync import SidecarClient
from certus.sidecar.protos import pb
from tests.conftest import free_port, make_config, start_sidecar

SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
QUERY = "Who gave their name to Normandy?"
ANSWER = "The Normans gave their name to Normandy, a region in France."
CONTEXT = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t



def test_evaluate_through_the_client(sidecar: Any) -> None:
    with SidecarClient(sidecar.target, timeout_ms=30_000, workspace_id="acme") as client:
        ev = client.evaluate(QUERY, ANSWER, CONTEXT, trace_id="t-1", request_id="r-1")
    assert not ev.skipped and ev.skip_reason == ""
    assert SHA256.fullmatch(ev.evidence_id)
    assert ev.outcome in ("pass", "warning", "fail") and ev.passed is (ev.outcome != "fail")
    assert ev.metrics["faithfulness"] >= 0.7 and 0.0 <= ev.metrics["confidence"] <= 1.0  # every claim supported
    assert ev.trace_id == "t-1" and ev.request_id == "r-1" and ev.mode == "shadow"
    assert ev.response is not None and ev.to_dict()["evidence_id"] == ev.evidence_id
    assert client.stats.completed == 1


def test_invalid_request_is_skipped_naming_the_field_and_leaves_the_breaker_closed(sidecar: Any) -> None:
    with SidecarClient(sidecar.target, timeout_ms=30_000, failure_threshold=1) as client:
        ev = client.evaluate("", ANSWER, CONTEXT)
        assert ev.skipped and ev.skip_reason == "invalid_request" and ev.status_code == "INVALID_ARGUMENT"
        assert "query" in ev.error
        assert client.breaker.state == "closed"


def test_measure_same_numbers_in_process_over_the_wire_and_through_the_client(sidecar: Any, encoder: Any) -> None:
    from certus.sidecar import measure
    from certus.sidecar.toolkit import measure as measure_mod

    text1, text2 = "Apple's Q4 revenue was $450 billion", "Apple reported Q4 revenue of $89.5B"
    measure_mod.use_encoder(encoder)
    try:
        local = measure(text1, text2, threshold=0.7)
    finally:
        measure_mod.reset()
    rpc = sidecar.stub.Measure(pb.MeasureRequest(text1=text1, text2=text2, threshold=0.7), timeout=30)
    with SidecarClient(sidecar.target, timeout_ms=30_000) as client:
        remote = client.measure(text1, text2, 0.7)
    assert not remote.skipped
    for name in ("semantic_score", "grounding_score", "confidence", "numeric_consistency"):
        assert getattr(local, name) == pytest.approx(getattr(rpc, name), abs=1e-6), name
        assert getattr(remote, name) == getattr(rpc, name)
    assert local.matched == rpc.matched == remote.matched is False


def test_offline_evaluate_gives_the_online_numbers(sidecar: Any, encoder: Any, tmp_path: Path) -> None:
    from certus.sidecar.toolkit.evaluate import evaluate_traces

    answer = "The Normans, descended from Norse raiders, gave their name to Normandy in the 10th century."
    resp = sidecar.stub.Evaluate(pb.EvaluateRequest(workspace_id="acme", query=QUERY, response=answer, context=CONTEXT), timeout=60)
    online = {m.name: m.value for m in resp.metrics}
    traces = tmp_path / "traces.jsonl"
    traces.write_text(json.dumps({"query": QUERY, "context": CONTEXT, "answer": answer}) + "\n")
    run = evaluate_traces(traces, 0.7, cfg=make_config(tmp_path), encoder=encoder)
    offline = run.results[0].metrics
    assert set(offline) == set(online)
    for name, value in online.items():
        assert offline[name] == pytest.approx(value, abs=1e-5), name


def test_server_down_then_breaker_opens_half_opens_and_recovers(tmp_path: Path, encoder: Any) -> None:
    port = free_port()
    clock = Clock()
    client = SidecarClient(
        f"127.0.0.1:{port}",
        timeout_ms=2000,
        failure_threshold=3,
        recovery_timeout_s=30.0,
        clock=clock,
        reconnect_backoff_ms=100,
        max_reconnect_backoff_ms=200,
    )
    running = None
    try:
        for _ in range(3):
            ev = client.evaluate(QUERY, ANSWER, CONTEXT)
            assert ev.skipped and ev.skip_reason == "service_unavailable" and ev.status_code == "UNAVAILABLE"
        assert client.breaker.state == "open" and client.breaker.times_opened == 1
        ev = client.evaluate(QUERY, ANSWER, CONTEXT)
        assert ev.skipped and ev.skip_reason == "circuit_breaker_open" and ev.status_code == ""
        clock.t += 30.0  # half-open: one probe, still down -> open again
        ev = client.evaluate(QUERY, ANSWER, CONTEXT)
        assert ev.skip_reason == "service_unavailable" and client.breaker.times_opened == 2
        assert client.evaluate(QUERY, ANSWER, CONTEXT).skip_reason == "circuit_breaker_open"

        running = start_sidecar(make_config(tmp_path, server={"address": f"127.0.0.1:{port}"}), encoder=encoder)
        grpc.channel_ready_future(client.channel).result(timeout=60)
        assert client.evaluate(QUERY, ANSWER, CONTEXT).skip_reason == "circuit_breaker_open"  # still waiting
        clock.t += 30.0
        ev = client.evaluate(QUERY, ANSWER, CONTEXT, workspace_id="acme", timeout_ms=30_000)
        assert not ev.skipped and SHA256.fullmatch(ev.evidence_id)
        assert client.breaker.state == "closed" and client.breaker.times_closed == 1
        assert client.stats.skipped == {"service_unavailable": 4, "circuit_breaker_open": 3}
    finally:
        client.close()
        if running is not None:
            running.stop()


class HungPeer:
    """A TCP peer that hangs: optionally completes the HTTP/2 handshake (sends an empty SETTINGS
    frame), then reads and never answers — what a wedged process looks like on the wire."""

    SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"

    def __init__(self, handshake: bool) -> None:
        self.handshake = handshake
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.settimeout(0.2)
        self.conns: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.conns.append(conn)
            if self.handshake:
                conn.sendall(self.SETTINGS)
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        while not self.stop.is_set():
            try:
                if not conn.recv(65536):
                    return
            except OSError:
                continue

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for c in self.conns:
            c.close()
        self.listener.close()


def test_a_peer_that_accepts_the_call_and_never_answers_is_a_timeout() -> None:
    peer = HungPeer(handshake=True)
    try:
        with SidecarClient(peer.target, timeout_ms=100, deadline_slack_ms=200) as client:
            ev = client.evaluate(QUERY, ANSWER, CONTEXT)
            assert ev.skipped and ev.skip_reason == "timeout" and ev.status_code == "DEADLINE_EXCEEDED"
            assert client.breaker.consecutive_failures == 1
    finally:
        peer.close()


def test_a_peer_that_never_speaks_http2_is_unavailable() -> None:
    peer = HungPeer(handshake=False)
    try:
        with SidecarClient(peer.target, timeout_ms=100, deadline_slack_ms=200) as client:
            ev = client.evaluate(QUERY, ANSWER, CONTEXT)
            assert ev.skipped and ev.skip_reason in ("service_unavailable", "timeout")
            assert client.breaker.consecutive_failures == 1
    finally:
        peer.close()


def test_async_client_times_out_on_a_hung_peer() -> None:
    peer = HungPeer(handshake=True)

    async def run() -> None:
        async with AsyncSidecarClient(peer.target, timeout_ms=100, deadline_slack_ms=200) as c:
            ev = await c.evaluate(QUERY, ANSWER, CONTEXT)
            assert ev.skipped and ev.skip_reason in ("timeout", "client_timeout")

    try:
        asyncio.run(run())
    finally:
        peer.close()


def test_submit_returns_a_future_that_never_fails(sidecar: Any) -> None:
    with SidecarClient(sidecar.target, timeout_ms=30_000, workspace_id="acme") as client:
        futures = [client.submit(QUERY, ANSWER, CONTEXT, request_id=f"r{i}") for i in range(4)]
        results = [f.result(timeout=60) for f in futures]
    assert [r.request_id for r in results] == ["r0", "r1", "r2", "r3"]
    assert all(not r.skipped and SHA256.fullmatch(r.evidence_id) for r in results)
    down = SidecarClient(f"127.0.0.1:{free_port()}", timeout_ms=500)
    try:
        r = down.submit(QUERY, ANSWER, CONTEXT).result(timeout=30)
        assert r.skipped and r.skip_reason == "service_unavailable"
    finally:
        down.close()


def test_async_client(sidecar: Any) -> None:
    async def run() -> None:
        async with AsyncSidecarClient(sidecar.target, timeout_ms=30_000, workspace_id="acme") as client:
            ev = await client.evaluate(QUERY, ANSWER, CONTEXT, trace_id="a-1")
            assert not ev.skipped and SHA256.fullmatch(ev.evidence_id) and ev.trace_id == "a-1"
            task = client.evaluate_in_background(QUERY, ANSWER, CONTEXT)
            assert isinstance(task, asyncio.Task)
            assert not (await task).skipped
            m = await client.measure("The Normans came from Normandy.", CONTEXT[0])
            assert not m.skipped and 0.0 < m.confidence <= 1.0
            bad = await client.evaluate(QUERY, ANSWER, [1])  # type: ignore[list-item]
            assert bad.skip_reason == "invalid_request"

    asyncio.run(run())


def test_async_client_server_down_and_breaker() -> None:
    clock = Clock()

    async def run() -> None:
        async with AsyncSidecarClient(f"127.0.0.1:{free_port()}", timeout_ms=500, failure_threshold=2, clock=clock) as c:
            a = await c.evaluate(QUERY, ANSWER, CONTEXT)
            b = await c.evaluate(QUERY, ANSWER, CONTEXT)
            assert a.skip_reason == b.skip_reason == "service_unavailable"
            assert c.breaker.state == "open"
            assert (await c.evaluate(QUERY, ANSWER, CONTEXT)).skip_reason == "circuit_breaker_open"
            assert (await c.measure("a", "b")).skip_reason == "circuit_breaker_open"
            clock.t += 30.0
            assert (await c.evaluate(QUERY, ANSWER, CONTEXT)).skip_reason == "service_unavailable"  # the probe
            assert c.breaker.state == "open" and c.breaker.times_opened == 2

    asyncio.run(run())


def test_trace_forwards_calls_to_the_sidecar(sidecar: Any, tmp_path: Path) -> None:
    from certus.client import tracing as td
    from certus.client.tracing import trace

    log = tmp_path / "traces.jsonl"
    got: dict[str, Any] = {}
    client = SidecarClient(sidecar.target, timeout_ms=30_000)

    @trace(log_path=log, forward=client, workspace_id="acme", on_evaluation=lambda tid, ev: got.__setitem__(tid, ev))
    def rag(query: str) -> dict[str, Any]:
        return {"query": query, "context": CONTEXT, "answer": ANSWER}

    @trace(log_path=log, forward=client)
    def no_context(query: str) -> str:
        return "an answer without context"

    try:
        for i in range(3):
            assert rag(f"{QUERY} ({i})")["answer"] == ANSWER
        no_context("q")
        assert td.flush(60)
        rows = [json.loads(x) for x in log.read_text().splitlines()]
        assert len(rows) == 4
        assert set(got) == {r["trace_id"] for r in rows[:3]}
        for tid, ev in got.items():
            assert not ev.skipped and SHA256.fullmatch(ev.evidence_id) and ev.trace_id == tid
        st = td.stats(log)
        assert (st.forwarded, st.forward_skipped, st.forward_not_sent) == (3, 0, 1)  # no context: not sent
    finally:
        client.close()


def test_trace_forwarding_to_a_dead_sidecar_costs_the_caller_nothing(tmp_path: Path) -> None:
    from certus.client import tracing as td
    from certus.client.tracing import trace

    log = tmp_path / "dead.jsonl"

    @trace(log_path=log, forward={"target": f"127.0.0.1:{free_port()}", "timeout_ms": 500, "failure_threshold": 2})
    def rag(query: str) -> dict[str, Any]:
        return {"query": query, "context": CONTEXT, "answer": ANSWER}

    for i in range(5):
        assert rag(f"q{i}")["answer"] == ANSWER
    assert td.flush(60)
    assert len(log.read_text().splitlines()) == 5
    assert td.stats(log).forward_skipped == 5  # 2 unavailable, then the breaker skips at once
