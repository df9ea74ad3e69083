"""`certus-sidecar serve` as a real process: embedded defaults, SIGTERM drains in-flight calls."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certus.sidecar.loadgen import start_local_sidecar
from certus.sidecar.protos import pb, pb_grpc
from tests.conftest import run_cli, wait_gone

pytestmark = pytest.mark.slow


def test_sigterm_finishes_in_flight_calls_then_exits(model_dir) -> None:
    proc, target, home = start_local_sidecar()
    try:
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.EvaluatorStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
        # a heavy call: 50 fresh chunks to embed, so it is still running when SIGTERM arrives
        tag = uuid.uuid4().hex
        heavy = pb.EvaluateRequest(
            workspace_id="acme",
            query="What happened?",
            response="Something happened in the year 1066. " * 20,
            context=[f"Chunk {i} {tag}: " + "the normans crossed the channel and won the battle. " * 15 for i in range(50)],
            timeout_ms=30_000,
        )
        result: dict[str, object] = {}

        def call() -> None:
            try:
                result["resp"] = stub.Evaluate(heavy, timeout=60)
            except grpc.RpcError as exc:  # pragma: no cover - reported by the assertion below
                result["err"] = exc

        t = threading.Thread(target=call)
        t.start()
        # wait until the call is in flight on the server, then ask it to stop
        import time

        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert "err" not in result, result.get("err")
        assert result["resp"].evidence_id.startswith("sha256:")
        assert proc.wait(60) == 0
        # a new call is refused: nothing listens any more
        with pytest.raises(grpc.RpcError) as exc:
            stub.Evaluate(heavy, timeout=5)
        assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_health_only_listener_mirrors_health_and_serves_nothing_else(tmp_path, encoder) -> None:
    """CERTUS_HEALTH_ADDRESS: kubelet's native gRPC probe target beside a loopback-only API."""
    import socket

    from tests.conftest import make_config, start_sidecar

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        health_port = s.getsockname()[1]
    cfg = make_config(tmp_path, server={"health_address": f"127.0.0.1:{health_port}"})
    running = start_sidecar(cfg, encoder=encoder)
    probe = grpc.insecure_channel(f"127.0.0.1:{health_port}")
    try:
        health = health_pb2_grpc.HealthStub(probe)
        for service in ("", "certus.evaluate.v1.Evaluator"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status == (
                health_pb2.HealthCheckResponse.SERVING
            )
        with pytest.raises(grpc.RpcError) as exc:  # the API is not on this listener
            pb_grpc.EvaluatorStub(probe).GetInfo(pb.GetInfoRequest(), timeout=10)
        assert exc.value.code() == grpc.StatusCode.UNIMPLEMENTED
        running.loop.run(running.app.health.enter_graceful_shutdown())  # statuses are shared
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )
    finally:
        probe.close()
        running.stop()


def _serve_until_exit(home, model_dir, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`certus-sidecar serve` in a fresh process with ``env`` on top; for start-ups that must fail."""
    return run_cli("serve", env={"CERTUS_HOME": str(home), "CERTUS_MODEL_DIR": str(model_dir), **env}, timeout=120)


@pytest.mark.parametrize(
    ("env", "exit_code", "message"),
    [
        ({"CERTUS_MAX_BATCH_SIZE": "sixty-four"}, 2, "CERTUS_MAX_BATCH_SIZE (batcher.max_batch_size): must be an integer, got 'sixty-four'"),
        ({"CERTUS_MATCH_THRESHOLD": "high"}, 2, "CERTUS_MATCH_THRESHOLD (scoring.match_threshold): must be a number, got 'high'"),
        ({"CERTUS_CONFIG": "/nonexistent/certus.toml"}, 2, "config file /nonexistent/certus.toml"),
        ({"CERTUS_MODEL_VARIANT": "bf16"}, 1, "model.variant: must be one of fp32, int8, fp16"),
        ({"CERTUS_ADDRESS": "0.0.0.0:0"}, 1, "refusing to listen on 0.0.0.0:0"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line_naming_it(tmp_path, model_dir, env, exit_code, message) -> None:
    """No traceback for an operator's mistake: one line on stderr that names the setting, exit != 0."""
    proc = _serve_until_exit(tmp_path, model_dir, env)
    assert proc.returncode == exit_code, proc.stderr[-2000:]
    assert f"certus-sidecar: {message}" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_an_address_in_use_stops_start_up_naming_the_setting(tmp_path, model_dir) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = _serve_until_exit(tmp_path, model_dir, {"CERTUS_ADDRESS": address})
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert f"certus-sidecar: server.address {address}: cannot listen there" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    # it opened the evidence log before binding, and closed it cleanly
    assert '"event": "evidence_log_closed"' in proc.stderr


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_pii_worker_process_never_outlives_the_sidecar(model_dir, how) -> None:
    """PII's pattern recognizers run in a child process (CERTUS_PII_PROCESS, default on), names come
    from the head on the encoder's token states in the server. A clean stop closes the child; a
    sidecar killed with SIGKILL cannot, so the child notices its parent is gone and leaves."""
    proc, target, home = start_local_sidecar()
    try:
        channel = grpc.insecure_channel(target)
        stub = pb_grpc.EvaluatorStub(channel)
        details = stub.GetInfo(pb.GetInfoRequest(), timeout=10).details
        child = int(details["pii.worker_pid"])
        assert details["pii.worker_restarts"] == "0"
        assert details["pii.ner_model"] == "minilm-token-head"  # names from the encoder's token states
        assert child != proc.pid and os.path.exists(f"/proc/{child}")
        response = "Our customer Peter Novak was born on 4 May 1980; write to john.smith@example.com."
        resp = stub.Evaluate(pb.EvaluateRequest(workspace_id="acme", query="Who?", response=response, context=["x"]), timeout=30)
        found = {(v.detector, response[v.start : v.end]) for v in resp.guardrail_violations}
        # the email from the child's pattern recognizers, the date of birth (high severity, as the
        # default manifest asks) from the head's DATE_TIME
        assert {("EMAIL_ADDRESS", "john.smith@example.com"), ("DATE_OF_BIRTH", "4 May 1980")} <= found
        channel.close()
        # every process the sidecar started (the worker, and multiprocessing's resource tracker)
        children = {
            int(pid)
            for task in os.listdir(f"/proc/{proc.pid}/task")
            for pid in open(f"/proc/{proc.pid}/task/{task}/children").read().split()
        }
        assert child in children
        proc.send_signal(getattr(signal, how))
        proc.wait(60)
        left = wait_gone(children, 15)
        assert not left, f"processes {left} outlived the sidecar ({how}); the PII worker was {child}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

