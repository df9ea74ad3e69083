"""``certus-sidecar prove``: proof bundles an auditor checks without the log.

- inclusion: one decision's log line, its leaf index (= seq), the RFC 9162 inclusion path and the
  signed checkpoint it leads to;
- consistency: two signed checkpoints and the RFC 9162 consistency path between them.

Bundles are checked by :mod:`certus.client.transparency` (Python) or ``clients/node`` (Node), given
only the trusted public key(s). Reading the log is read-only (the sidecar may be running).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from certus.client.transparency import CONSISTENCY_FORMAT, INCLUSION_FORMAT
from certus.sidecar.evidence.checkpoint import Checkpoint, CheckpointError, CheckpointStore, open_checkpoint
from certus.sidecar.evidence.keyring import keyring_for, load_rotations
from certus.sidecar.evidence.merkle import Leaves, leaf_hash
from certus.sidecar.evidence.records import LogRecord, iter_log, read_public_keys


class ProveError(ValueError):
    """The proof cannot be made (unknown evidence id, no checkpoint covers it, ...)."""


def _b64(hashes: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


def _rotations(log_dir: Path) -> list[dict[str, Any]]:
    """Every rotation record: the auditor's keyring follows them from the key they trust."""
    return [env.to_json_dict() for env in load_rotations(log_dir)]


def _checkpoints(log_dir: Path) -> list[Checkpoint]:
    """The log's checkpoints, signature-checked against its own keys (the auditor re-checks them
    against the keys they trust)."""
    ring = keyring_for(log_dir, read_public_keys(log_dir))
    out = []
    for d, n in CheckpointStore(log_dir):
        try:
            out.append(open_checkpoint(str(d.get("note")), ring.keys))
        except CheckpointError as exc:
            raise ProveError(f"checkpoints.jsonl line {n}: {exc}") from exc
    if not out:
        raise ProveError(f"{log_dir}: no signed checkpoint yet (the sidecar signs one every checkpoint interval and on shutdown)")
    return out


def _scan(log_dir: Path, evidence_id: str = "", seq: int | None = None) -> tuple[list[bytes], LogRecord | None]:
    """Leaf hashes of every record in order, and the record asked for (if any)."""
    leaves: list[bytes] = []
    found: LogRecord | None = None
    for rec in iter_log(log_dir):
        if rec.seq != len(leaves):
            raise ProveError(f"record seq {rec.seq} at position {len(leaves)}: the chain is broken (run verify)")
        if rec.evidence_id == evidence_id or rec.seq == seq:
            found = rec
        leaves.append(leaf_hash(rec.line))
    return leaves, found


def _first(leaves: list[bytes], size: int) -> list[bytes]:
    if len(leaves) < size:
        raise ProveError(f"the log holds {len(leaves)} records, fewer than the checkpoint's {size}: records were removed")
    return leaves[:size]


def inclusion_bundle(log_dir: str | Path, *, evidence_id: str = "", seq: int | None = None, tree_size: int | None = None) -> dict[str, Any]:
    """The bundle for the decision with ``evidence_id`` (or ``seq``) against the newest checkpoint
    that covers it (or the one of ``tree_size``)."""
    log_dir = Path(log_dir)
    if not evidence_id and seq is None:
        raise ProveError("give an evidence id or a seq")
    cps = _checkpoints(log_dir)
    leaves, rec = _scan(log_dir, evidence_id, seq)
    if rec is None:
        raise ProveError(f"{evidence_id or f'seq {seq}'} is not in the log")
    if tree_size is not None:
        chosen = [c for c in cps if c.size == tree_size]
        if not chosen:
            raise ProveError(f"no checkpoint of tree size {tree_size} (sizes: {sorted({c.size for c in cps})[-10:]} ...)")
    else:
        chosen = [c for c in cps if c.size > rec.seq]
        if not chosen:
            raise ProveError(
                f"seq {rec.seq} is newer than the newest checkpoint (size {cps[-1].size}); "
                "wait for the next one (evidence.checkpoint_interval_s) and try again"
            )
    cp = chosen[-1]
    if cp.size <= rec.seq:
        raise ProveError(f"the checkpoint of size {cp.size} does not cover seq {rec.seq}")
    leaves = _first(leaves, cp.size)
    return {
        "format": INCLUSION_FORMAT,
        "record": rec.line.decode(),
        "evidence_id": rec.evidence_id,
        "leaf_index": rec.seq,
        "tree_size": cp.size,
        "inclusion_path": _b64(Leaves(leaves).inclusion_proof(rec.seq, cp.size)),
        "checkpoint": cp.note,
        "key_rotations": _rotations(log_dir),
    }


def consistency_bundle(log_dir: str | Path, old_size: int, new_size: int) -> dict[str, Any]:
    """The bundle between the log's checkpoints of ``old_size`` and ``new_size`` records."""
    log_dir = Path(log_dir)
    if old_size > new_size:
        raise ProveError(f"OLD ({old_size}) must not be larger than NEW ({new_size})")
    cps = {c.size: c for c in _checkpoints(log_dir)}
    missing = [s for s in (old_size, new_size) if s not in cps]
    if missing:
        raise ProveError(f"no checkpoint of tree size {missing[0]} (sizes: {sorted(cps)[-10:]} ...)")
    leaves = _first(_scan(log_dir)[0], new_size)
    return {
        "format": CONSISTENCY_FORMAT,
        "old_checkpoint": cps[old_size].note,
        "new_checkpoint": cps[new_size].note,
        "consistency_path": _b64(Leaves(leaves).consistency_proof(old_size, new_size)),
        "key_rotations": _rotations(log_dir),
    }
