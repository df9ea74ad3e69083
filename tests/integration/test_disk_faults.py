"""The sidecar heals after disk faults without a restart (issue 17, part 1).

The evidence log and the forwarder's outbox live on a real size-limited tmpfs that the test mounts
(as root; skipped with the reason otherwise). The installed ``certus-sidecar serve`` runs on it:

- the disk fills up: calls get UNAVAILABLE at once (never an answer without its record), health
  goes NOT_SERVING with the reason in GetInfo and the metric; once space is freed the log repairs
  its tail and health is SERVING again, with no restart;
- the filesystem goes read-only under it (an ext4 image, mounted with ``errors=remount-ro``, gets a
  filesystem error through ext4's ``trigger_fs_error``: the kernel's forced remount, the one that
  happens in production; a plain ``mount -o remount,ro`` is refused while the log is open), and is
  then unmounted and mounted again read-write, as an operator would: the same;
- every acknowledged ``evidence_id`` is in the log, ``certus-sidecar verify`` passes, and the
  server printed no traceback (the forwarder's cursor writes failed too).
"""

from __future__ import annotations

import subprocess
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.loadgen import start_local_sidecar
from certus.sidecar.protos import pb, pb_grpc
from tests.conftest import cli_argv, cli_env, free_port, wait_until

pytestmark = pytest.mark.slow

FS_BYTES = 4 * 1024 * 1024



def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture
def small_fs() -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="certus-tmpfs-"))
    out = _run("mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mnt))
    if out.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a size-limited tmpfs here (needs root): {out.stderr.strip() or out.returncode}")
    try:
        yield mnt
    finally:
        _run("mount", "-o", "remount,rw", str(mnt))
        _run("umount", "-l", str(mnt))
        mnt.rmdir()


class Running:
    """The installed sidecar with its evidence log and outbox on ``fs``; its output is collected."""

    def __init__(self, fs: Path, outside: Path) -> None:
        env = {
            "CERTUS_EVIDENCE_DIR": str(fs / "evidence"),
            "CERTUS_OUTBOX_DIR": str(fs / "outbox"),
            "CERTUS_INTEGRITY_FILE": str(outside / "integrity" / "decisions.jsonl"),
            "CERTUS_SIGNING_KEY": str(outside / "keys" / "signing.key"),
            "CERTUS_INTRA_OP_THREADS": "1",
            "CERTUS_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
            "LOG_LEVEL": "INFO",
        }
        self.metrics_url = f"http://{env['CERTUS_METRICS_ADDRESS']}/metrics"
        self.proc, self.target, _ = start_local_sidecar(env, stderr_file="stderr.log")
        self.stderr = Path(_) / "stderr.log"
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.EvaluatorStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.acked: list[str] = []

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def evaluate(self) -> grpc.StatusCode:
        req = pb.EvaluateRequest(
            workspace_id="acme",
            query=f"What did the report say? {uuid.uuid4().hex}",
            response="Revenue grew 8% to $89.5B in Q4.",
            context=["Apple reported Q4 revenue of $89.5B, up 8% year over year."],
        )
        try:
            resp = self.stub.Evaluate(req, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
        assert resp.evidence_id.startswith("sha256:")
        self.acked.append(resp.evidence_id)
        return grpc.StatusCode.OK

    def serving(self) -> bool:
        resp = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    def metric(self, name: str) -> float:
        text = urllib.request.urlopen(self.metrics_url, timeout=10).read().decode()
        return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))

    def details(self) -> dict[str, str]:
        return dict(self.stub.GetInfo(pb.GetInfoRequest(), timeout=10).details)

    def tail(self) -> str:
        return ("".join(self.lines[-20:]) + self.stderr.read_text()[-2000:])[-3000:]

    def stop(self) -> str:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(60)
        return "".join(self.lines) + self.stderr.read_text()


def _fault_then_heal(sc: Running, make_fault: Any, clear_fault: Any, reason: str) -> None:
    for _ in range(3):
        assert sc.evaluate() is grpc.StatusCode.OK
    assert sc.serving()
    make_fault()
    codes = [sc.evaluate() for _ in range(5)]
    # the first call may still fit (a write the page cache took); from the failure on, every call is refused
    assert codes[-1] is grpc.StatusCode.UNAVAILABLE and grpc.StatusCode.UNAVAILABLE in codes
    wait_until(lambda: not sc.serving(), "health NOT_SERVING after the write error", timeout_s=20)
    d = sc.details()
    assert d["evidence.healthy"] == "False" and reason in d["evidence.failure"], d
    assert sc.metric("certus_evaluate_evidence_log_healthy") == 0.0
    assert sc.evaluate() is grpc.StatusCode.UNAVAILABLE  # still failed: refused at once
    clear_fault()
    try:
        wait_until(sc.serving, "health SERVING again, without a restart", timeout_s=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the server's last words: {sc.tail()}") from None
    d = sc.details()
    assert d["evidence.healthy"] == "True" and d["evidence.failure"] == "" and int(d["evidence.recoveries"]) >= 1
    assert sc.metric("certus_evaluate_evidence_log_healthy") == 1.0
    assert sc.metric("certus_evaluate_evidence_log_recoveries_total") >= 1.0
    for _ in range(3):
        assert sc.evaluate() is grpc.StatusCode.OK


def _check_log(sc: Running, fs: Path, output: str) -> None:
    assert "Traceback" not in output, output[-3000:]
    ids = [r.evidence_id for r in iter_log(fs / "evidence")]
    assert set(sc.acked) <= set(ids) and len(ids) == len(set(ids))  # every acknowledged decision is recorded
    argv = cli_argv("verify", fs / "evidence")
    out = subprocess.run(argv, env=cli_env(), capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def fill_up(filler: Path) -> None:
    """Write ``filler`` until its file system has no space left."""
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


def test_a_full_disk_fails_health_and_heals_once_space_is_freed(small_fs: Path, tmp_path: Path) -> None:
    sc = Running(small_fs, tmp_path)
    filler = small_fs / "filler"
    try:
        _fault_then_heal(sc, lambda: fill_up(filler), lambda: filler.unlink(), "No space left on device")
        assert int(sc.details()["evidence.failures"]) >= 1
    finally:
        output = sc.stop()
    _check_log(sc, small_fs, output)
    assert "evidence_log_recovered" in output


@pytest.fixture
def ext4_fs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(mount point, image) of an ext4 image without a journal, mounted with errors=remount-ro."""
    img, mnt = tmp_path / "ext4.img", Path(tempfile.mkdtemp(prefix="certus-ext4-"))
    with img.open("wb") as f:
        f.truncate(32 * 1024 * 1024)
    steps = [("mkfs.ext4", "-q", "-F", "-O", "^has_journal", str(img)),
             ("mount", "-o", "loop,errors=remount-ro", str(img), str(mnt))]
    for argv in steps:
        try:
            out = _run(*argv)
        except FileNotFoundError as exc:
            out = subprocess.CompletedProcess(argv, 127, "", str(exc))
        if out.returncode != 0:
            mnt.rmdir()
            why = out.stderr.strip()
            pytest.skip(f"cannot make and loop-mount an ext4 image here (needs root and mkfs.ext4): {why}")
    try:
        yield mnt, img
    finally:
        _run("umount", "-l", str(mnt))
        mnt.rmdir()


def test_a_forced_read_only_remount_fails_health_and_heals_after_a_fresh_mount(
    ext4_fs: tuple[Path, Path], tmp_path: Path
) -> None:
    mnt, img = ext4_fs
    device = Path(_run("findmnt", "-n", "-o", "SOURCE", str(mnt)).stdout.strip()).name
    trigger = Path("/sys/fs/ext4") / device / "trigger_fs_error"
    if not trigger.exists():
        pytest.skip(f"{trigger} is missing: this kernel cannot force the read-only remount")
    sc = Running(mnt, tmp_path)

    def remount() -> None:
        # what an operator does: unmount the broken volume (the failed log let go of its files, so
        # a plain umount works), mount it again
        out = _run("umount", str(mnt))
        assert out.returncode == 0, out.stderr
        out = _run("mount", "-o", "loop,errors=remount-ro", str(img), str(mnt))
        assert out.returncode == 0, out.stderr

    try:
        _fault_then_heal(sc, lambda: trigger.write_text("certus test"), remount, "Read-only file system")
    finally:
        output = sc.stop()
    _check_log(sc, mnt, output)
