"""Several front-end processes (``server.frontends = 2``) of the real installed sidecar, end to end.

One sidecar is started as a user starts it (the installed ``certus-sidecar serve``, from outside
the repository) with ``CERTUS_FRONTENDS=2``: the hub process and one more front-end process listen
on the same loopback port. Clients open separate connections until each process has answered one
(GetInfo names the answering process), then:

- evaluations through both processes land in ONE hash chain: contiguous seqs, every evidence_id a
  client received is in the log, and ``certus-sidecar verify`` passes;
- the same request scores the same through either process (one encoder, one scorer);
- concurrent requests of both processes are encoded in shared batches (the hub's counters), and
  admitted by one admission over both (its floor is the sidecar's, not each process's);
- an async evaluation accepted by one process is fetched through the other;
- errors raised in the hub reach the caller with their status (NOT_FOUND), and a bad request is
  refused in the front-end itself with the field named;
- the hub's Prometheus endpoint counts the calls every process answered;
- when the hub's evidence log fails (a full disk), calls through a front-end are refused and both
  processes report NOT_SERVING, then SERVING again once it repairs itself;
- a front-end killed with SIGKILL is started again and serves; SIGTERM stops every process, exit 0.

Settings that cannot work with several processes are refused before anything loads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.loadgen import start_local_sidecar
from certus.sidecar.protos import pb, pb_grpc
from certus.sidecar.signing import VerifyKey
from tests.conftest import OUTSIDE, cli_argv, cli_env, free_port, wait_until
from tests.integration.test_disk_faults import fill_up, small_fs  # noqa: F401 - small_fs: the size-limited tmpfs fixture

pytestmark = pytest.mark.slow


def channel_per_process(
    target: str, channels: list[grpc.Channel], metadata: tuple[tuple[str, str], ...] = (), tries: int = 40
) -> dict[str, grpc.Channel]:
    """frontend.index -> a connection of its own that process serves (the kernel picks the process
    of each new connection: 40 tries miss one of two with probability 2^-39). Every channel opened
    is appended to ``channels`` for the caller to close."""
    out: dict[str, grpc.Channel] = {}
    for _ in range(tries):
        ch = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        channels.append(ch)
        details = pb_grpc.EvaluatorStub(ch).GetInfo(pb.GetInfoRequest(), metadata=metadata, timeout=30).details
        out.setdefault(details["frontend.index"], ch)
        if len(out) == 2:
            break
    return out


class Sidecar:
    def __init__(self) -> None:
        self.metrics = f"127.0.0.1:{free_port()}"
        self.proc, self.target, self.home = start_local_sidecar(
            {"CERTUS_FRONTENDS": "2", "CERTUS_GRACE_S": "5", "LOG_LEVEL": "INFO", "CERTUS_METRICS_ADDRESS": self.metrics},
            stderr_file="stderr.log",
            drain_stdout=True,
        )
        self.channels: list[grpc.Channel] = []

    def stub_per_process(self) -> dict[str, pb_grpc.EvaluatorStub]:
        """frontend.index -> a stub whose connection that process serves."""
        return {i: pb_grpc.EvaluatorStub(ch) for i, ch in channel_per_process(self.target, self.channels).items()}

    def close(self) -> None:
        for ch in self.channels:
            ch.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stderr(self) -> str:
        return (self.home / "stderr.log").read_text()


@pytest.fixture(scope="module")
def sidecar() -> Any:
    sc = Sidecar()
    try:
        yield sc
    finally:
        sc.close()


def request(i: int, **kw: Any) -> Any:
    return pb.EvaluateRequest(
        workspace_id="fe",
        query=f"What does the report number {i} say about the budget?",
        response=f"Report {i} says the budget grew by {i + 3} percent in 2024.",
        context=[f"Report {i}: the budget grew by {i + 3} percent in 2024, driven by staffing."],
        **kw,
    )


def test_both_processes_serve_the_port(sidecar: Sidecar) -> None:
    stubs = sidecar.stub_per_process()
    assert set(stubs) == {"0", "1"}
    hub = dict(stubs["0"].GetInfo(pb.GetInfoRequest(), timeout=30).details)
    other = dict(stubs["1"].GetInfo(pb.GetInfoRequest(), timeout=30).details)
    assert hub["frontends"] == other["frontends"] == "2"
    assert hub["frontend.pid"] != other["frontend.pid"]
    assert hub["frontends.pids"] == other["frontend.pid"]  # the hub supervises the other one
    # each process runs its own PII worker; the key and the log position are the hub's
    assert hub["pii.worker_pid"] != other["pii.worker_pid"]
    assert hub["evidence.key_id"] == other["evidence.key_id"]
    # one admission over both processes: the default floor of 8 calls in flight is the sidecar's
    assert hub["admission.limit"] == other["admission.limit"] == "8"


def test_decisions_of_both_processes_share_one_chain(sidecar: Sidecar, tmp_path: Path) -> None:
    stubs = sidecar.stub_per_process()
    received: dict[str, str] = {}  # evidence_id -> evaluation_id
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client(stub: pb_grpc.EvaluatorStub, offset: int) -> None:
        try:
            for i in range(12):
                r = stub.Evaluate(request(offset + i), timeout=60)
                assert not r.skipped, r.skip_reason
                with lock:
                    received[r.evidence_id] = r.evaluation_id
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(stubs[k], 100 * n)) for n, k in enumerate(["0", "1", "0", "1"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not errors, errors
    assert len(received) == 48

    # each answer came after its decision was durable: the log holds them all now
    records = list(iter_log(sidecar.home / "evidence"))
    seqs = [r.seq for r in records]
    assert seqs == list(range(len(seqs)))  # one writer: contiguous, no fork of the chain
    assert all(b.prev_hash == a.evidence_id for a, b in zip(records, records[1:]))
    logged = {r.evidence_id: r for r in records}
    for evidence_id, evaluation_id in received.items():
        assert evidence_id in logged, evidence_id
        assert logged[evidence_id].decision_id == evaluation_id

    info = stubs["1"].GetInfo(pb.GetInfoRequest(), timeout=30)

    key = VerifyKey(bytes(info.public_key))
    pub = tmp_path / "trusted.pub"
    pub.write_text(key.to_base64() + "\n")
    done = subprocess.run(
        cli_argv("verify", sidecar.home / "evidence", "--key", pub),
        cwd=OUTSIDE, env=cli_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_same_request_same_scores_through_either_process(sidecar: Sidecar) -> None:
    stubs = sidecar.stub_per_process()
    a = stubs["0"].Evaluate(request(7), timeout=60)
    b = stubs["1"].Evaluate(request(7), timeout=60)
    assert [(m.name, m.value) for m in a.metrics] == [(m.name, m.value) for m in b.metrics]
    assert [(c.start, c.end, c.support) for c in a.claims] == [(c.start, c.end, c.support) for c in b.claims]
    assert a.evidence_id != b.evidence_id and a.passed == b.passed
    measure = pb.MeasureRequest(text1="The budget grew by 7 percent.", text2="Spending rose 7% this year.")
    m0, m1 = (stubs[k].Measure(measure, timeout=60) for k in "01")
    assert (m0.semantic_score, m0.confidence, m0.matched) == (m1.semantic_score, m1.confidence, m1.matched)


def test_concurrent_requests_of_both_processes_share_encoder_batches(sidecar: Sidecar) -> None:
    stubs = sidecar.stub_per_process()
    before = dict(stubs["0"].GetInfo(pb.GetInfoRequest(), timeout=30).details)
    # 8 at once: within the admission floor, which is the sidecar's over both processes
    futures = [stubs[k].Evaluate.future(request(1000 + 2 * i + j), timeout=60) for i in range(4) for j, k in enumerate("01")]
    for f in futures:
        assert not f.result().skipped
    after = dict(stubs["0"].GetInfo(pb.GetInfoRequest(), timeout=30).details)
    texts = int(after["batcher.texts_encoded"]) - int(before["batcher.texts_encoded"])
    batches = int(after["batcher.batches"]) - int(before["batcher.batches"])
    assert texts >= 8 * 3  # every request brought new texts to the one encoder
    assert int(after["batcher.merged_batches"]) > int(before["batcher.merged_batches"])
    assert batches < texts  # texts were encoded together, not one per run


def test_async_evaluation_is_fetched_through_the_other_process(sidecar: Sidecar) -> None:
    stubs = sidecar.stub_per_process()
    for submit, fetch in (("1", "0"), ("0", "1")):
        accepted = stubs[submit].Evaluate(request(2000, mode=pb.EVALUATION_MODE_ASYNC), timeout=60)
        assert accepted.status == pb.EVALUATION_STATUS_PENDING

        def done() -> bool:
            got = stubs[fetch].GetEvaluation(
                pb.GetEvaluationRequest(evaluation_id=accepted.evaluation_id, workspace_id="fe"), timeout=30
            )
            return bool(got.status == pb.EVALUATION_STATUS_COMPLETED)

        wait_until(done, "the async result through the other process", timeout_s=60, step_s=0.1)
        got = stubs[fetch].GetEvaluation(
            pb.GetEvaluationRequest(evaluation_id=accepted.evaluation_id, workspace_id="fe"), timeout=30
        )
        assert got.result.evaluation_id == accepted.evaluation_id and got.result.evidence_id.startswith("sha256:")


def test_errors_keep_their_status_across_the_hub(sidecar: Sidecar) -> None:
    stubs = sidecar.stub_per_process()
    with pytest.raises(grpc.RpcError) as missing:  # raised by the hub's job table
        stubs["1"].GetEvaluation(pb.GetEvaluationRequest(evaluation_id=str(uuid.uuid4()), workspace_id="fe"), timeout=30)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "not found" in missing.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        stubs["1"].Evaluate(pb.EvaluateRequest(workspace_id="no spaces", query="q", response="r"), timeout=30)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "workspace_id" in bad.value.details()


def test_the_metrics_endpoint_counts_the_calls_of_every_process(sidecar: Sidecar) -> None:
    """The hub's Prometheus endpoint adds each front-end's request metrics into its own."""
    stubs = sidecar.stub_per_process()

    def scrape() -> str:
        with urllib.request.urlopen(f"http://{sidecar.metrics}/metrics", timeout=30) as resp:
            return str(resp.read().decode())

    def evaluate_ok(text: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("certus_evaluate_grpc_requests_total{") and 'method="Evaluate"' in line and 'code="OK"' in line
        )

    before = scrape()
    for i in range(5):
        stubs["1"].Evaluate(request(4000 + i), timeout=60)
    for i in range(3):
        stubs["0"].Evaluate(request(4100 + i), timeout=60)
    young = {i: int(st.GetInfo(pb.GetInfoRequest(), timeout=30).details["gc.young_passes"]) for i, st in stubs.items()}
    after = scrape()
    assert evaluate_ok(after) - evaluate_ok(before) == 8  # the hub alone answered 3 of them
    # one family per name: the front-ends' samples are merged in, not listed a second time
    for family in ("certus_evaluate_grpc_requests_total", "certus_evaluate_request_duration_seconds"):
        assert sum(line.startswith(f"# TYPE {family} ") for line in after.splitlines()) == 1, family
    assert sum(line.startswith("certus_evaluate_service_info{") for line in after.splitlines()) == 1
    # garbage collections: each process's counters added in (each process's GetInfo has its own)
    gc_young = sum(
        float(line.rsplit(" ", 1)[1])
        for line in after.splitlines()
        if line.startswith("certus_evaluate_gc_passes_total{") and ('generation="0"' in line or 'generation="1"' in line)
    )
    assert min(young.values()) > 0 and gc_young >= young["0"] + young["1"]
    assert sum(line.startswith("# TYPE certus_evaluate_gc_passes_total ") for line in after.splitlines()) == 1


def test_one_admission_over_both_processes(sidecar: Sidecar) -> None:
    """12 calls at once, 6 through each process, against a floor of 8 for the whole sidecar: some
    are answered as signed overloaded skips (each process alone would have admitted its 6)."""
    stubs = sidecar.stub_per_process()
    futures = [stubs[k].Evaluate.future(request(5000 + 2 * i + j), timeout=60) for i in range(6) for j, k in enumerate("01")]
    answers = [f.result() for f in futures]
    skipped = [a for a in answers if a.skipped]
    assert skipped and all(a.skip_reason == "overloaded" and a.evidence_id.startswith("sha256:") for a in skipped)
    assert len(answers) - len(skipped) >= 8


def test_a_killed_frontend_is_started_again_then_sigterm_stops_all(sidecar: Sidecar) -> None:
    stubs = sidecar.stub_per_process()
    old = int(dict(stubs["1"].GetInfo(pb.GetInfoRequest(), timeout=30).details)["frontend.pid"])
    os.kill(old, signal.SIGKILL)

    def restarted() -> bool:
        details = dict(stubs["0"].GetInfo(pb.GetInfoRequest(), timeout=30).details)
        return details["frontends.restarts"] == "1" and details["frontends.pids"] not in ("", str(old))

    wait_until(restarted, "the front-end started again", timeout_s=300, step_s=0.5)
    wait_until(lambda: "frontend_restarted" in sidecar.stderr(), "the restarted front-end serving", 300, 0.5)
    fresh = sidecar.stub_per_process()
    assert fresh["1"].Evaluate(request(3000), timeout=60).evidence_id.startswith("sha256:")
    new = int(dict(fresh["1"].GetInfo(pb.GetInfoRequest(), timeout=30).details)["frontend.pid"])
    assert new != old

    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(60) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(new, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"front-end {new} still running after the hub stopped")
    assert "frontend_stopped" in sidecar.stderr()


@pytest.mark.parametrize(
    "env, named",
    [
        ({"CERTUS_FRONTENDS": "0"}, "server.frontends (CERTUS_FRONTENDS) must be >= 1"),
        ({"CERTUS_FRONTENDS": "2", "CERTUS_RATE_LIMIT_RPS": "5"}, "auth.rate_limit_rps (CERTUS_RATE_LIMIT_RPS)"),
        ({"CERTUS_FRONTENDS": "two"}, "CERTUS_FRONTENDS (server.frontends)"),
    ],
)
def test_settings_several_frontends_cannot_honour_are_refused(tmp_path: Path, env: dict[str, str], named: str) -> None:
    env = {
        **env,
        "CERTUS_ADDRESS": "127.0.0.1:0",
        "CERTUS_EVIDENCE_DIR": str(tmp_path / "evidence"),
        "CERTUS_SIGNING_KEY": str(tmp_path / "signing.key"),
    }
    done = subprocess.run(
        cli_argv("serve"), cwd=OUTSIDE, env=cli_env(env), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert named in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_every_frontend_enforces_the_tokens(tmp_path: Path) -> None:
    """A front-end process is not a side door: the same tokens file, scopes and workspaces."""
    import json

    from tests.integration.test_auth import ADMIN, BETA, READER, TOKENS, bearer, code_of
    from tests.integration.test_auth import request as acme_request

    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(TOKENS))
    proc, target, _home = start_local_sidecar(
        {"CERTUS_FRONTENDS": "2", "CERTUS_AUTH_TOKENS_FILE": str(tokens_file)}, drain_stdout=True
    )
    channels: list[grpc.Channel] = []
    try:
        stubs = {i: pb_grpc.EvaluatorStub(ch) for i, ch in channel_per_process(target, channels, bearer(ADMIN)).items()}
        assert set(stubs) == {"0", "1"}
        for stub in stubs.values():
            assert code_of(stub.Evaluate, acme_request(), timeout=30) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(stub.Evaluate, acme_request(), metadata=bearer("wrong-token-0123456789"), timeout=30) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
            assert code_of(stub.Evaluate, acme_request(), metadata=bearer(BETA), timeout=30) == grpc.StatusCode.PERMISSION_DENIED
            assert stub.Evaluate(acme_request(), metadata=bearer(READER), timeout=60).evidence_id.startswith("sha256:")
    finally:
        for ch in channels:
            ch.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_a_full_disk_under_the_hub_turns_every_process_not_serving_and_back(small_fs: Path, tmp_path: Path) -> None:
    """The hub's evidence log fails (its disk fills up): calls through a front-end are refused
    (UNAVAILABLE, never an answer without its record) and both processes' health goes NOT_SERVING
    (the hub pushes the log's state); once space is freed both are SERVING again, no restart."""
    env = {
        "CERTUS_FRONTENDS": "2",
        "CERTUS_EVIDENCE_DIR": str(small_fs / "evidence"),
        "CERTUS_OUTBOX_DIR": str(small_fs / "outbox"),
        "CERTUS_INTEGRITY_FILE": str(tmp_path / "integrity" / "decisions.jsonl"),
        "CERTUS_SIGNING_KEY": str(tmp_path / "keys" / "signing.key"),
        "CERTUS_INTRA_OP_THREADS": "1",
    }
    proc, target, _home = start_local_sidecar(env, drain_stdout=True)
    channels: list[grpc.Channel] = []
    try:
        stubs = {
            i: (pb_grpc.EvaluatorStub(ch), health_pb2_grpc.HealthStub(ch)) for i, ch in channel_per_process(target, channels).items()
        }
        assert set(stubs) == {"0", "1"}

        def serving(index: str) -> bool:
            status = stubs[index][1].Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status
            return bool(status == health_pb2.HealthCheckResponse.SERVING)

        def evaluate() -> grpc.StatusCode:
            try:
                stubs["1"][0].Evaluate(request(int(uuid.uuid4().int % 10**6)), timeout=30)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        assert evaluate() is grpc.StatusCode.OK and serving("0") and serving("1")
        filler = small_fs / "filler"
        fill_up(filler)
        codes = [evaluate() for _ in range(5)]
        assert codes[-1] is grpc.StatusCode.UNAVAILABLE, codes
        wait_until(lambda: not serving("0") and not serving("1"), "both processes NOT_SERVING", timeout_s=20)
        assert dict(stubs["1"][0].GetInfo(pb.GetInfoRequest(), timeout=30).details)["evidence.healthy"] == "False"
        filler.unlink()
        wait_until(lambda: serving("0") and serving("1"), "both processes SERVING again", timeout_s=60)
        assert evaluate() is grpc.StatusCode.OK
    finally:
        for ch in channels:
            ch.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
