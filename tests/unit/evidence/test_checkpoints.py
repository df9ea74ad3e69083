"""Signed checkpoints, proofs and key rotation on a real evidence log.

The signed-note format is checked byte for byte against the published vector of Go's
golang.org/x/mod/sumdb/note (the PeterNeumann example key and note). The log signs checkpoints
that `verify` checks against the records; a dropped tail, a forked root, an edited checkpoint and
a replaced rotation record are each named. `prove` bundles verify with the standalone verifier
given only the first public key, across a key rotation, and fail once anything in them changes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from evidence_samples import sample_decision

from certus.client import transparency as tp
from certus.sidecar.cli import main as cli_main
from certus.sidecar.config import EvidenceConfig
from certus.sidecar.evidence.checkpoint import (
    CheckpointError,
    CheckpointStore,
    open_checkpoint,
    sign_checkpoint,
    sign_note,
    vkey,
)
from certus.sidecar.evidence.log import EvidenceLog, EvidenceLogCorrupt, EvidenceLogError
from certus.sidecar.evidence.merkle import Leaves, leaf_hash
from certus.sidecar.evidence.prove import ProveError, consistency_bundle, inclusion_bundle
from certus.sidecar.evidence.records import iter_log, list_segments
from certus.sidecar.evidence.verify import verify_log
from certus.sidecar.signing import DECISION_PAYLOAD_TYPE, SigningKey, canonical_json, sign_envelope

# golang.org/x/mod/sumdb/note's documented example
GO_SKEY_SEED = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"


def test_signed_note_matches_the_go_reference_vector() -> None:
    key = SigningKey(base64.b64decode(GO_SKEY_SEED)[1:])
    assert vkey("PeterNeumann", key.verify_key) == GO_VKEY
    assert sign_note(GO_TEXT, "PeterNeumann", [key]) == GO_NOTE
    text, signers = tp.verify_note(GO_NOTE, "PeterNeumann", [key.verify_key.public_bytes])
    assert text == GO_TEXT and signers == (key.key_id,)
    with pytest.raises(tp.ProofError, match="does not verify"):
        tp.verify_note(GO_NOTE.replace("cryptography", "cryptographY"), "PeterNeumann", [key.verify_key.public_bytes])
    with pytest.raises(tp.ProofError, match="not signed by a trusted key"):
        tp.verify_note(GO_NOTE, "PeterNeumann", [SigningKey.generate().verify_key.public_bytes])


def test_checkpoint_note_shape_and_unknown_signatures_are_ignored(key: SigningKey, other_key: SigningKey) -> None:
    cp = sign_checkpoint("example.org/log", 7, b"\x07" * 32, [key])
    lines = cp.note.split("\n")
    assert lines[:4] == ["example.org/log", "7", base64.b64encode(b"\x07" * 32).decode(), ""]
    assert lines[4].startswith("\u2014 example.org/log ") and lines[5] == ""
    both = sign_checkpoint("example.org/log", 7, b"\x07" * 32, [other_key, key])
    assert open_checkpoint(both.note, [key.verify_key]).signers == (key.key_id,)  # the other one is skipped
    with pytest.raises(tp.ProofError, match="origin"):
        open_checkpoint(cp.note, [key.verify_key], origin="another/log")


def _run(cfg: EvidenceConfig, key: SigningKey, n: int, start: int = 0, between: Callable[[EvidenceLog], Any] | None = None) -> EvidenceLog:
    async def go() -> EvidenceLog:
        log = EvidenceLog.open(cfg, key)
        for i in range(start, start + n):
            await log.append(sample_decision(i))
            if between is not None:
                await between(log) if asyncio.iscoroutinefunction(between) else between(log)
        await log.close()
        return log

    return asyncio.run(go())


def test_checkpoints_are_signed_while_the_log_grows_and_at_close(
    tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]
) -> None:
    cfg = log_cfg(checkpoint_interval_s=0.05)

    async def slow(log: EvidenceLog) -> None:
        await asyncio.sleep(0.02)

    log = _run(cfg, key, 30, between=slow)
    entries = list(CheckpointStore(cfg.log_dir))
    sizes = [d["size"] for d, _ in entries]
    assert len(sizes) >= 3 and sizes == sorted(sizes) and sizes[-1] == 30  # periodic ones, then the close
    assert log.stats()["checkpoint_size"] == 30 and log.stats()["tree_size"] == 30
    leaves = [leaf_hash(r.line) for r in iter_log(cfg.log_dir)]
    for d, _ in entries:
        cp = open_checkpoint(d["note"], [key.verify_key])
        assert cp.root == Leaves(leaves).root(cp.size)
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok and report.checkpoints == len(entries) and report.checkpoint_size == 30
    assert report.tree_root == base64.b64encode(Leaves(leaves).root(30)).decode()
    assert report.origin == "certus-evaluate/" + next(iter_log(cfg.log_dir)).evidence_id[7:23]


def test_restart_resumes_the_tree_from_the_last_checkpoint(tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]) -> None:
    cfg = log_cfg(checkpoint_interval_s=0)  # only at close
    _run(cfg, key, 9)
    _run(cfg, key, 8, start=9)
    _run(cfg, key, 0)  # nothing new: no new checkpoint
    sizes = [d["size"] for d, _ in CheckpointStore(cfg.log_dir)]
    assert sizes == [9, 17]
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok and report.checkpoints == 2
    b = consistency_bundle(cfg.log_dir, 9, 17)
    assert tp.verify_consistency_bundle(b, [key.verify_key.public_bytes])["new"]["size"] == 17


def test_newest_reads_the_last_line_and_verifies_it(tmp_path: Path, key: SigningKey, other_key: SigningKey, log_cfg: Callable[..., EvidenceConfig]) -> None:
    cfg = log_cfg(checkpoint_interval_s=0)
    store = CheckpointStore(cfg.log_dir)
    assert store.newest([key.verify_key]) is None  # no file yet
    _run(cfg, key, 9)
    _run(cfg, key, 8, start=9)
    newest = store.newest([key.verify_key])
    assert newest is not None and newest.checkpoint == store.load([key.verify_key])[-1].checkpoint
    assert newest.checkpoint.size == 17
    with pytest.raises(CheckpointError):
        store.newest([other_key.verify_key])  # not signed by a trusted key
    with store.path.open("ab") as f:
        f.write(b'{"note": "torn')  # a torn last line is ignored, as by every reader
    assert store.newest([key.verify_key]).checkpoint.size == 17  # type: ignore[union-attr]


def _drop_last_records(log_dir: Path, n: int) -> None:
    seg = list_segments(log_dir)[-1][1]
    lines = seg.read_bytes().split(b"\n")[:-1]
    seg.write_bytes(b"".join(line + b"\n" for line in lines[:-n]))


def test_a_dropped_tail_is_named_by_verify_and_refused_at_open(tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]) -> None:
    cfg = log_cfg()
    _run(cfg, key, 12)
    _drop_last_records(cfg.log_dir, 3)
    report = verify_log(cfg.log_dir, key.verify_key)
    assert not report.ok and report.records == 9
    assert report.first_bad is not None and report.first_bad.segment == "checkpoints.jsonl"
    assert "the log holds 9: records from seq 9 on were removed" in report.first_bad.reason
    with pytest.raises(EvidenceLogCorrupt, match="records from seq 9 on were removed"):
        EvidenceLog.open(cfg, key)


def test_an_edited_or_forked_checkpoint_is_named(tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig]) -> None:
    cfg = log_cfg()
    _run(cfg, key, 6)
    path = cfg.log_dir / "checkpoints.jsonl"
    good = path.read_text()
    entry = json.loads(good)
    # a note whose root is another tree's, signed by the right key (a fork signed by the sidecar)
    forked = sign_checkpoint(entry["note"].split("\n")[0], 6, b"\x01" * 32, [key])
    path.write_text(json.dumps({**entry, "note": forked.note}) + "\n")
    report = verify_log(cfg.log_dir, key.verify_key)
    assert not report.ok and "differs from the records' Merkle root" in report.first_bad.reason  # type: ignore[union-attr]
    # an edited note (size changed without re-signing)
    path.write_text(json.dumps({**entry, "note": entry["note"].replace("\n6\n", "\n5\n", 1), "size": 5}) + "\n")
    report = verify_log(cfg.log_dir, key.verify_key)
    assert not report.ok and "does not verify" in report.first_bad.reason  # type: ignore[union-attr]
    path.write_text(good)
    assert verify_log(cfg.log_dir, key.verify_key).ok


def test_inclusion_bundles_verify_standalone_and_any_change_fails(
    tmp_path: Path, key: SigningKey, other_key: SigningKey, log_cfg: Callable[..., EvidenceConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = log_cfg()
    _run(cfg, key, 11)
    pub = [key.verify_key.public_bytes]
    records = list(iter_log(cfg.log_dir))
    for rec in records:
        b = inclusion_bundle(cfg.log_dir, evidence_id=rec.evidence_id)
        out = tp.verify_inclusion_bundle(json.loads(json.dumps(b)), pub)
        assert out["seq"] == rec.seq and out["evidence_id"] == rec.evidence_id and out["checkpoint"]["size"] == 11
    b = inclusion_bundle(cfg.log_dir, seq=4)
    tampered = {
        "record": b["record"].replace('"payload":"', '"payload":"A', 1),
        "leaf_index": 5,
        "tree_size": 12,
        "inclusion_path": [base64.b64encode(b"\x00" * 32).decode()] + b["inclusion_path"][1:],
        "checkpoint": b["checkpoint"].replace("\n11\n", "\n12\n"),
        "evidence_id": records[5].evidence_id,
    }
    for field, value in tampered.items():
        with pytest.raises(tp.ProofError):
            tp.verify_inclusion_bundle({**b, field: value}, pub)
    with pytest.raises(tp.ProofError, match="trusted"):
        tp.verify_inclusion_bundle(b, [other_key.verify_key.public_bytes])
    # the module's command line: exit 0 with a report, exit 1 naming the failure
    capsys.readouterr()
    bundle_file, key_file = tmp_path / "b.json", tmp_path / "k.pub"
    bundle_file.write_text(json.dumps(b))
    key_file.write_text(key.verify_key.to_base64() + "\n")
    assert tp.main(["inclusion", str(bundle_file), "--key", str(key_file)]) == 0
    assert json.loads(capsys.readouterr().out)["decision_id"] == records[4].decision_id
    bundle_file.write_text(json.dumps({**b, "leaf_index": 3}))
    assert tp.main(["inclusion", str(bundle_file), "--key", str(key_file)]) == 1
    assert "leaf_index 3 is not the decision's seq 4" in capsys.readouterr().out


def test_prove_cli_and_its_errors(tmp_path: Path, key: SigningKey, log_cfg: Callable[..., EvidenceConfig], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = log_cfg(checkpoint_interval_s=0)
    _run(cfg, key, 5)
    _run(cfg, key, 4, start=5)
    eid = list(iter_log(cfg.log_dir))[2].evidence_id
    out = tmp_path / "p.json"
    assert cli_main(["prove", "inclusion", "--evidence-id", eid, "--log-dir", str(cfg.log_dir), "--tree-size", "5", "--out", str(out)]) == 0
    bundle = json.loads(out.read_text())
    assert bundle["tree_size"] == 5 and bundle["leaf_index"] == 2
    capsys.readouterr()
    assert cli_main(["prove", "consistency", "5", "9", "--log-dir", str(cfg.log_dir)]) == 0
    cons = json.loads(capsys.readouterr().out)
    assert tp.verify_consistency_bundle(cons, [key.verify_key.public_bytes])["old"]["size"] == 5
    assert cli_main(["prove", "consistency", "5", "7", "--log-dir", str(cfg.log_dir)]) == 1
    assert "no checkpoint of tree size 7" in capsys.readouterr().err
    assert cli_main(["prove", "inclusion", "--evidence-id", "sha256:" + "0" * 64, "--log-dir", str(cfg.log_dir)]) == 1
    assert "is not in the log" in capsys.readouterr().err
    with pytest.raises(ProveError, match="does not cover|no checkpoint of tree size"):
        inclusion_bundle(cfg.log_dir, seq=6, tree_size=5)
    # a consistency proof between checkpoints in the wrong order does not verify
    swapped = {**cons, "old_checkpoint": cons["new_checkpoint"], "new_checkpoint": cons["old_checkpoint"]}
    with pytest.raises(tp.ProofError, match="rollback"):
        tp.verify_consistency_bundle(swapped, [key.verify_key.public_bytes])


# -- key rotation -----------------------------------------------------------------------------------


def _rotating_run(cfg: EvidenceConfig, old: SigningKey, new: SigningKey, before: int, after: int) -> EvidenceLog:
    """Append ``before`` decisions, put ``new`` in the next-key file, wait for the rotation,
    append ``after`` more."""

    async def go() -> EvidenceLog:
        log = EvidenceLog.open(cfg, old)
        for i in range(before):
            await log.append(sample_decision(i))
        new.write(log.next_key_path)
        deadline = time.monotonic() + 10
        while log.key_id != new.key_id:
            assert time.monotonic() < deadline, "no rotation within 10 s"
            await asyncio.sleep(0.05)
        for i in range(before, before + after):
            await log.append(sample_decision(i))
        await log.close()
        return log

    return asyncio.run(go())


def test_rotation_keeps_chain_and_checkpoints_verifiable_from_the_first_key(
    tmp_path: Path, key: SigningKey, other_key: SigningKey, log_cfg: Callable[..., EvidenceConfig]
) -> None:
    key.write(tmp_path / "signing.key")
    cfg = log_cfg(key_path=tmp_path / "signing.key", checkpoint_interval_s=0)
    log = _rotating_run(cfg, key, other_key, 6, 5)
    assert log.stats()["key_rotations"] == 1
    # the new key is now the key file, the old private key is gone, the next-key file consumed
    assert SigningKey.from_file(tmp_path / "signing.key").key_id == other_key.key_id
    assert not (tmp_path / "signing.key.next").exists()
    signers = [r.envelope.signatures[0][0] for r in iter_log(cfg.log_dir)]
    assert signers == [key.key_id] * 6 + [other_key.key_id] * 5
    report = verify_log(cfg.log_dir, key.verify_key)  # only the first key is trusted
    assert report.ok, report.summary()
    assert report.rotations == (f"{key.key_id} -> {other_key.key_id} at seq 6",)
    assert report.checkpoints == 2  # the boundary (signed by both) and the close
    boundary = open_checkpoint(json.loads((cfg.log_dir / "checkpoints.jsonl").read_text().splitlines()[0])["note"], [key.verify_key, other_key.verify_key])
    assert boundary.size == 6 and set(boundary.signers) == {key.key_id, other_key.key_id}
    # trusting only the new key: the records before the rotation are not trusted
    assert not verify_log(cfg.log_dir, other_key.verify_key).ok
    # standalone: a decision before and one after the rotation, checked with the first key only
    for seq in (2, 9):
        out = tp.verify_inclusion_bundle(inclusion_bundle(cfg.log_dir, seq=seq), [key.verify_key.public_bytes])
        assert out["signed_by"] == (key.key_id if seq < 6 else other_key.key_id)
    # the retired key may not sign again: the log refuses it at open
    with pytest.raises(EvidenceLogError, match="retired by a key rotation at seq 6"):
        EvidenceLog.open(cfg, key)
    # and a record it signs after its epoch (the last one, re-signed by the old key) is named
    seg = list_segments(cfg.log_dir)[-1][1]
    lines = seg.read_bytes().split(b"\n")[:-1]
    payload = json.loads(base64.b64decode(json.loads(lines[-1])["payload"]))
    payload["key_id"] = key.key_id
    lines[-1] = sign_envelope(key, DECISION_PAYLOAD_TYPE, canonical_json(payload)).to_json()
    seg.write_bytes(b"".join(line + b"\n" for line in lines))
    report = verify_log(cfg.log_dir, key.verify_key)
    assert not report.ok and report.first_bad is not None and report.first_bad.seq == 10
    assert f"signed by {key.key_id} outside its key epoch (retired at seq 6)" in report.first_bad.reason


def test_a_rotation_record_by_an_untrusted_key_breaks_verify(
    tmp_path: Path, key: SigningKey, other_key: SigningKey, log_cfg: Callable[..., EvidenceConfig]
) -> None:
    key.write(tmp_path / "signing.key")
    cfg = log_cfg(key_path=tmp_path / "signing.key", checkpoint_interval_s=0)
    _rotating_run(cfg, key, other_key, 3, 2)
    from certus.sidecar.evidence.keyring import make_rotation

    intruder = SigningKey.generate()
    # an attacker replaces the rotation record with one of their own key, "signed" by themselves
    forged = make_rotation(intruder, other_key.verify_key, 3, "", "2026-01-01T00:00:00Z")
    (cfg.log_dir / "rotations.jsonl").write_bytes(forged.line + b"\n")
    report = verify_log(cfg.log_dir, key.verify_key)
    assert not report.ok and report.first_bad is not None
    assert report.first_bad.segment == "rotations.jsonl" and "does not trust" in report.first_bad.reason


def test_crash_between_rotation_record_and_key_move_adopts_the_next_key(
    tmp_path: Path, key: SigningKey, other_key: SigningKey, log_cfg: Callable[..., EvidenceConfig]
) -> None:
    key.write(tmp_path / "signing.key")
    cfg = log_cfg(key_path=tmp_path / "signing.key", checkpoint_interval_s=0)
    _rotating_run(cfg, key, other_key, 4, 0)
    # put the files back as they were before the move: old key in place, new key still "next",
    # and the stop came before the boundary checkpoint was written too
    (tmp_path / "signing.key").rename(tmp_path / "signing.key.next")
    key.write(tmp_path / "signing.key", overwrite=True)
    (cfg.log_dir / "checkpoints.jsonl").unlink()
    log = _run(cfg, key, 3, start=4)
    assert log.key_id == other_key.key_id and not (tmp_path / "signing.key.next").exists()
    boundary = open_checkpoint(json.loads((cfg.log_dir / "checkpoints.jsonl").read_text().splitlines()[0])["note"], [key.verify_key])
    assert boundary.size == 4 and len(boundary.note.split("\n\n")[1].splitlines()) == 2  # signed by both keys again
    assert verify_log(cfg.log_dir, key.verify_key).ok


def test_keygen_rotate_writes_the_next_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k"
    assert cli_main(["keygen", "--rotate", "--out", str(out)]) == 1  # no current key yet
    assert "no current key" in capsys.readouterr().err
    assert cli_main(["keygen", "--out", str(out)]) == 0
    assert cli_main(["keygen", "--rotate", "--out", str(out)]) == 0
    nxt = SigningKey.from_file(tmp_path / "k.next")
    assert nxt.key_id != SigningKey.from_file(out).key_id and (tmp_path / "k.next.pub").exists()
    assert (tmp_path / "k.next").stat().st_mode & 0o777 == 0o600
