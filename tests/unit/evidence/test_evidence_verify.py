"""verify: a clean log passes with an exact summary; every kind of tampering is caught and the
first bad record (segment, line, seq) is named; the CLI exits non-zero naming it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
from pathlib import Path
from typing import Callable

import pytest
from evidence_samples import sample_decision

from certus.sidecar.cli import main as cli_main
from certus.sidecar.config import EvidenceConfig
from certus.sidecar.domain import Outcome
from certus.sidecar.evidence.decision import IntegrityDecision
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.verify import NoTrustedKey, verify_log
from certus.sidecar.signing import DECISION_PAYLOAD_TYPE, SigningKey, canonical_json, sign_envelope

OUTCOMES = [Outcome.PASS, Outcome.PASS, Outcome.FAIL, Outcome.PASS, Outcome.WARNING, Outcome.PASS, Outcome.FAIL, Outcome.SKIPPED]
SEG1 = "segment-000001.jsonl"


@pytest.fixture
def clean_log(tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]) -> Path:
    cfg = log_cfg(log_dir=tmp_path / "clean")

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        for i, outcome in enumerate(OUTCOMES):
            await log.append(sample_decision(i, outcome))
        await log.close()

    asyncio.run(run())
    return cfg.log_dir


def copy_log(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_lines(log_dir: Path) -> list[bytes]:
    return (log_dir / SEG1).read_bytes().splitlines(keepends=True)


def write_lines(log_dir: Path, lines: list[bytes]) -> None:
    (log_dir / SEG1).write_bytes(b"".join(lines))


def payload(line: bytes) -> dict[str, object]:
    d: dict[str, object] = json.loads(base64.b64decode(json.loads(line)["payload"]))
    return d


def test_clean_log_summary(clean_log: Path, key: SigningKey) -> None:
    report = verify_log(clean_log, key.verify_key)
    assert report.ok and report.first_bad is None
    assert report.records == 8 and report.segments == 1 and report.last_seq == 7
    assert report.outcomes == {"pass": 4, "fail": 2, "warning": 1, "skipped": 1}
    lines = read_lines(clean_log)
    assert report.first_timestamp == payload(lines[0])["timestamp"]
    assert report.last_timestamp == payload(lines[-1])["timestamp"]
    assert report.last_evidence_id == "sha256:" + hashlib.sha256(lines[-1].rstrip(b"\n")).hexdigest()
    assert report.key_ids == (key.key_id,) and report.key_source == "given"


def test_without_a_key_the_logs_own_key_is_used_and_said(clean_log: Path) -> None:
    report = verify_log(clean_log)
    assert report.ok and report.key_source == "log directory"
    assert any("--key" in w for w in report.warnings)
    shutil.rmtree(clean_log / "keys")
    with pytest.raises(NoTrustedKey):
        verify_log(clean_log)


def _edit_payload(line: bytes, **changes: object) -> bytes:
    env = json.loads(line)
    p = json.loads(base64.b64decode(env["payload"]))
    p.update(changes)
    env["payload"] = base64.b64encode(canonical_json(p)).decode()
    return canonical_json(env) + b"\n"


def _forge(line_before: bytes, seq: int, signer: SigningKey, claim_key_id: str | None = None) -> bytes:
    """A well-formed record continuing the chain after ``line_before``, signed by ``signer``."""
    dec = sample_decision(100).with_chain(
        seq, "sha256:" + hashlib.sha256(line_before.rstrip(b"\n")).hexdigest(), claim_key_id or signer.key_id
    )
    env = sign_envelope(signer, DECISION_PAYLOAD_TYPE, canonical_json(dec.to_payload()))
    if claim_key_id:
        env = type(env)(env.payload_type, env.payload, ((claim_key_id, env.signatures[0][1]),))
    return env.to_json() + b"\n"


def tamper_edit_payload_field(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    lines[3] = _edit_payload(lines[3], outcome="pass" if payload(lines[3])["outcome"] != "pass" else "fail")
    return lines


def tamper_flip_one_byte(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    raw = bytearray(lines[3])
    i = raw.index(b'"sig":"') + 20  # inside the base64 signature
    raw[i] = ord("A") if raw[i] != ord("A") else ord("B")
    lines[3] = bytes(raw)
    return lines


def tamper_drop(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    del lines[3]
    return lines


def tamper_swap(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    lines[3], lines[4] = lines[4], lines[3]
    return lines


def tamper_insert_copy(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    lines.insert(3, lines[2])  # replay of an existing, validly signed record
    return lines


def tamper_insert_forged(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    lines.insert(3, _forge(lines[2], 3, other))
    return lines


def tamper_append_forged_other_key(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    return lines + [_forge(lines[-1], len(lines), other)]


def tamper_append_forged_claiming_our_key(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    return lines + [_forge(lines[-1], len(lines), other, claim_key_id=key.key_id)]


def tamper_whitespace(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    lines[3] = lines[3].replace(b'","', b'", "', 1)
    return lines


def tamper_truncate_last(lines: list[bytes], key: SigningKey, other: SigningKey) -> list[bytes]:
    lines[-1] = lines[-1][:50]
    return lines


@pytest.mark.parametrize(
    ("tamper", "line", "seq", "reason"),
    [
        (tamper_edit_payload_field, 4, 3, "does not verify"),
        (tamper_flip_one_byte, 4, 3, "does not verify"),
        (tamper_drop, 4, 4, "expected 3"),
        (tamper_swap, 4, 4, "expected 3"),
        (tamper_insert_copy, 4, 2, "expected 3"),
        (tamper_insert_forged, 4, 3, "not signed by a trusted key"),
        (tamper_append_forged_other_key, 9, 8, "not signed by a trusted key"),
        (tamper_append_forged_claiming_our_key, 9, 8, "does not verify"),
        (tamper_whitespace, 4, 3, "canonical"),
        (tamper_truncate_last, 8, None, "incomplete"),
    ],
)
def test_tampering_is_caught_at_the_first_bad_record(
    tamper: Callable[[list[bytes], SigningKey, SigningKey], list[bytes]],
    line: int,
    seq: int | None,
    reason: str,
    clean_log: Path,
    tmp_path: Path,
    key: SigningKey,
    other_key: SigningKey,
) -> None:
    log_dir = copy_log(clean_log, tmp_path / "tampered")
    write_lines(log_dir, tamper(read_lines(log_dir), key, other_key))
    report = verify_log(log_dir, key.verify_key)
    assert not report.ok
    bad = report.first_bad
    assert bad is not None
    assert (bad.segment, bad.line, bad.seq) == (SEG1, line, seq)
    assert reason in bad.reason
    assert report.records == line - 1  # everything before it verified


def test_deleting_a_whole_segment_is_caught(tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]) -> None:
    cfg = log_cfg(segment_bytes=4096)

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        for i in range(12):
            await log.append(sample_decision(i))
        await log.close()

    asyncio.run(run())
    segs = sorted(cfg.log_dir.glob("segment-*.jsonl"))
    assert len(segs) >= 3
    first_of_third = payload(segs[2].read_bytes().splitlines()[0])["seq"]
    first_of_second = payload(segs[1].read_bytes().splitlines()[0])["seq"]
    segs[1].unlink()
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.first_bad is not None
    assert (report.first_bad.segment, report.first_bad.line, report.first_bad.seq) == (segs[2].name, 1, first_of_third)
    assert f"expected {first_of_second}" in report.first_bad.reason


def test_a_log_signed_by_another_key_fails_at_the_first_record(clean_log: Path, other_key: SigningKey) -> None:
    report = verify_log(clean_log, other_key.verify_key)
    assert report.first_bad is not None and (report.first_bad.line, report.first_bad.seq) == (1, 0)
    assert "not signed by a trusted key" in report.first_bad.reason


def test_payload_must_name_its_signer(clean_log: Path, tmp_path: Path, key: SigningKey) -> None:
    log_dir = copy_log(clean_log, tmp_path / "t")
    lines = read_lines(log_dir)
    # re-sign (with the right key) a payload that claims another key id
    p = IntegrityDecision.from_payload(payload(lines[1]))
    forged = p.with_chain(1, p.prev_hash or "", "ed25519:" + "f" * 16)
    env = sign_envelope(key, DECISION_PAYLOAD_TYPE, canonical_json(forged.to_payload()))
    lines[1] = env.to_json() + b"\n"
    write_lines(log_dir, lines)
    report = verify_log(log_dir, key.verify_key)
    assert report.first_bad is not None and report.first_bad.line == 2
    assert "differs from signer" in report.first_bad.reason


# -- CLI -------------------------------------------------------------------------------------


def _pub(tmp_path: Path, key: SigningKey) -> Path:
    pub = tmp_path / "trusted.pub"
    pub.write_text(key.verify_key.to_base64() + "\n")
    return pub


def test_cli_verify_ok(clean_log: Path, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify", str(clean_log), "--key", str(_pub(tmp_path, key))]) == 0
    out = capsys.readouterr().out
    assert "result: OK" in out
    assert "records verified: 8 in 1 segment(s)" in out
    assert "outcomes: fail=2, pass=4, skipped=1, warning=1" in out
    assert key.key_id in out


def test_cli_verify_json(clean_log: Path, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify", str(clean_log), "--key", str(_pub(tmp_path, key)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["records"] == 8 and report["first_bad"] is None


def test_cli_verify_names_the_first_bad_record(
    clean_log: Path, tmp_path: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = copy_log(clean_log, tmp_path / "t")
    write_lines(log_dir, tamper_drop(read_lines(log_dir), key, key))
    assert cli_main(["verify", str(log_dir), "--key", str(_pub(tmp_path, key))]) == 1
    captured = capsys.readouterr()
    assert f"verify FAILED at {SEG1} line 4 (seq 4)" in captured.err
    assert "result: FAILED" in captured.out


def test_cli_verify_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["verify", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    bad_key = tmp_path / "bad.pub"
    bad_key.write_text("not base64!\n")
    assert cli_main(["verify", str(tmp_path), "--key", str(bad_key)]) == 2
    assert "--key" in capsys.readouterr().err


def test_cli_keygen_writes_0600_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys" / "signing.key"
    assert cli_main(["keygen", "--out", str(out)]) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    first = SigningKey.from_file(out)
    assert first.verify_key.public_bytes == base64.b64decode((tmp_path / "keys" / "signing.key.pub").read_text())
    assert first.key_id in capsys.readouterr().out
    assert cli_main(["keygen", "--out", str(out)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert SigningKey.from_file(out).key_id == first.key_id
    assert cli_main(["keygen", "--out", str(out), "--force"]) == 0
    assert SigningKey.from_file(out).key_id != first.key_id
    assert out.stat().st_mode & 0o777 == 0o600


def test_record_spliced_from_another_chain_breaks_the_link(
    clean_log: Path, tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]
) -> None:
    """Same key, same seq, valid signature — only prev_hash shows it belongs to another chain."""
    cfg = log_cfg(log_dir=tmp_path / "other-chain")

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        for i in range(5):
            await log.append(sample_decision(50 + i))
        await log.close()

    asyncio.run(run())
    foreign = read_lines(cfg.log_dir)[3]
    log_dir = copy_log(clean_log, tmp_path / "t")
    lines = read_lines(log_dir)
    lines[3] = foreign
    write_lines(log_dir, lines)
    report = verify_log(log_dir, key.verify_key)
    assert report.first_bad is not None
    assert (report.first_bad.line, report.first_bad.seq) == (4, 3)
    assert "prev_hash" in report.first_bad.reason
