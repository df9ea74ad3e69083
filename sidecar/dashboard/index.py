"""A verified, incremental index of the evidence log for the dashboard (SQLite, stdlib ``sqlite3``).

The dashboard never rescans the log per page view. A background thread tails the log's segments
from a durable cursor (segment, byte offset, next seq, previous evidence id) and, for every new
complete line, runs the verifier's own per-record check (:func:`~sidecar.evidence.verify.check_record`:
canonical DSSE envelope, Ed25519 signature by a key of its epoch, decision schema, seq and
``prev_hash`` chain). Only records that pass are indexed; the first one that does not stops the
index there, and the dashboard says where and why.

What it keeps (hashes, ids, scores and locations only; the log holds no content):

- ``decisions``: one row per record (ids, time, workspace, manifest, outcome, skip reason, overall
  score, where its line is), for the drill-down and the recent lists;
- ``outcome_rollup``, ``metric_rollup``, ``violation_rollup``: per UTC day, workspace and manifest,
  counts, and per metric the count, sum, passes and a 100-bin histogram over [0, 1] (percentiles
  read from it are exact to half a bin, +-0.005). Week buckets are sums of days. A page view reads a
  few hundred rollup rows, whatever the log's length;
- ``claims``: per-claim character spans, supporting chunk and reason of decisions made while the
  dashboard ran inside the sidecar (the signed decision holds scores, not claims; the newest
  ``max_claims`` evaluations are kept).

The index file is the dashboard's own state: delete it and it is rebuilt from the log. A log that
was replaced (another first record) or shortened below the cursor rebuilds it as well.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import structlog

from certus.sidecar.domain import EvaluationResult
from certus.sidecar.evidence.decision import GENESIS_PREV_HASH, IntegrityDecision, parse_utc_timestamp, pass_rate
from certus.sidecar.evidence.keyring import ROTATIONS_FILE, Keyring, KeyringError, keyring_for
from certus.sidecar.evidence.records import list_segments, read_public_keys, try_lock
from certus.sidecar.evidence.verify import BadRecord, check_record
from certus.sidecar.signing import VerifyKey

log = structlog.get_logger(__name__)

SCHEMA_VERSION = "1"
BINS = 100  # metric histogram bins over [0, 1]
DAY_S = 86_400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
  seq INTEGER PRIMARY KEY, evaluation_id TEXT NOT NULL, evidence_id TEXT NOT NULL, ts REAL NOT NULL,
  workspace TEXT NOT NULL, manifest TEXT NOT NULL, outcome TEXT NOT NULL, skip_reason TEXT NOT NULL,
  overall REAL, violations INTEGER NOT NULL, key_id TEXT NOT NULL,
  segment INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL, line_no INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS decisions_eval ON decisions (evaluation_id);
CREATE INDEX IF NOT EXISTS decisions_evidence ON decisions (evidence_id);
CREATE TABLE IF NOT EXISTS outcome_rollup (
  day INTEGER, workspace TEXT, manifest TEXT, outcome TEXT, skip_reason TEXT, n INTEGER NOT NULL,
  PRIMARY KEY (day, workspace, manifest, outcome, skip_reason));
CREATE TABLE IF NOT EXISTS metric_rollup (
  day INTEGER, workspace TEXT, manifest TEXT, metric TEXT, n INTEGER NOT NULL, total REAL NOT NULL,
  passed INTEGER NOT NULL, hist BLOB NOT NULL, PRIMARY KEY (day, workspace, manifest, metric));
CREATE TABLE IF NOT EXISTS violation_rollup (
  day INTEGER, workspace TEXT, manifest TEXT, guardrail_type TEXT, severity TEXT, n INTEGER NOT NULL,
  PRIMARY KEY (day, workspace, manifest, guardrail_type, severity));
CREATE TABLE IF NOT EXISTS claims (evaluation_id TEXT PRIMARY KEY, data TEXT NOT NULL);
"""


def day_of(timestamp: str) -> tuple[float, int]:
    """(epoch seconds, UTC day number) of a decision's timestamp."""
    ts = parse_utc_timestamp(timestamp).timestamp()
    return ts, int(ts // DAY_S)


def claims_payload(result: EvaluationResult) -> str:
    """The claim locations of one answer as stored (offsets, scores, reasons; never text)."""
    return json.dumps(
        [
            {
                "start": c.start,
                "end": c.end,
                "support": round(float(c.support), 4),
                "supported": bool(c.supported),
                "chunk_index": c.chunk_index,
                "chunk_start": c.chunk_start,
                "chunk_end": c.chunk_end,
                "semantic": round(float(c.semantic), 4),
                "grounding": round(float(c.grounding), 4),
                "numeric": round(float(c.numeric), 4),
                "reason": c.reason,
            }
            for c in result.claims
        ],
        separators=(",", ":"),
    )


class IndexInUse(RuntimeError):
    """Another process holds this index."""


@dataclass
class IndexState:
    """The cursor and what the last pass saw; persisted in ``meta``."""

    segment: int = -1  # segment number being read (-1: none yet)
    offset: int = 0  # byte offset of the next line in it
    line_no: int = 0  # lines consumed in it
    next_seq: int = 0
    prev_hash: str = GENESIS_PREV_HASH
    first_evidence_id: str = ""
    first_segment: int = -1
    first_ts: str = ""
    last_ts: str = ""
    last_key_id: str = ""
    broken: str = ""  # the first record that failed verification, when one did
    key_source: str = ""
    warnings: list[str] = field(default_factory=list)


class EvidenceIndex:
    """``idx = EvidenceIndex(log_dir, db_path, keys); idx.start()``; pages call the query methods."""

    def __init__(
        self,
        log_dir: str | Path,
        db_path: str | Path,
        keys: Sequence[VerifyKey] | None = None,
        *,
        max_claims: int = 100_000,
        batch: int = 5_000,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.db_path = Path(db_path)
        self.given_keys = list(keys) if keys else None
        self.max_claims = max_claims
        self.batch = batch
        self.state = IndexState()
        self._lock = threading.Lock()  # one writer pass at a time
        self._claims: deque[tuple[str, str]] = deque(maxlen=max(1, max_claims))
        self._ring: Keyring | None = None
        self._rotations_size = -1
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        # one writer per index: two would each add the same records to the rollups
        self._lock_fd = try_lock(self.db_path.with_suffix(".lock"))
        if self._lock_fd is None:
            raise IndexInUse(f"{self.db_path}: the index is in use by another dashboard (another sidecar or `certus-sidecar dashboard` on this log and state directory)")
        self._db = self._connect()
        self._db.executescript(_SCHEMA)
        self._load_state()
        self.version = 0  # bumps when a pass indexed something (page caches key on it)

    # -- connections ------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.db_path), check_same_thread=False, timeout=30.0)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def reader(self) -> sqlite3.Connection:
        """A read connection for one request (sqlite3 connections are not shared across threads)."""
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30.0)
        db.execute("PRAGMA query_only=1")
        return db

    def _load_state(self) -> None:
        rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if rows.get("schema") != SCHEMA_VERSION or rows.get("log_dir") != str(self.log_dir.resolve()):
            self._reset()
            return
        st = json.loads(rows.get("state", "{}"))
        self.state = IndexState(**{k: v for k, v in st.items() if k in IndexState.__dataclass_fields__})
        self.state.broken = ""  # re-checked by the next pass

    def _reset(self) -> None:
        db = self._db
        for table in ("decisions", "outcome_rollup", "metric_rollup", "violation_rollup", "meta"):
            db.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
        db.execute("INSERT INTO meta VALUES ('schema', ?), ('log_dir', ?)", (SCHEMA_VERSION, str(self.log_dir.resolve())))
        db.commit()
        self.state = IndexState()

    def _save_state(self) -> None:
        self._db.execute(
            "INSERT INTO meta VALUES ('state', ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (json.dumps(self.state.__dict__),),
        )

    # -- trust ------------------------------------------------------------------------------------

    def keyring(self) -> Keyring | None:
        """The roots (given keys, else the log's keys/ directory) along the rotation records; rebuilt
        when rotations.jsonl changes (a rotation while the sidecar runs)."""
        rot = self.log_dir / ROTATIONS_FILE
        size = rot.stat().st_size if rot.exists() else 0
        if self._ring is not None and size == self._rotations_size:
            return self._ring
        if self.given_keys is not None:
            roots, self.state.key_source = self.given_keys, "given"
        else:
            roots, self.state.key_source = read_public_keys(self.log_dir), "log directory"
        if not roots:
            return None
        try:
            self._ring = keyring_for(self.log_dir, roots)
        except KeyringError as exc:
            self.state.broken = f"{ROTATIONS_FILE}: {exc}"
            return None
        self._rotations_size = size
        return self._ring

    # -- ingest -----------------------------------------------------------------------------------

    def add_claims(self, result: EvaluationResult) -> None:
        """Called by the pipeline for each recorded evaluation (a deque append on the hot path; the
        index thread writes them)."""
        if result.claims and result.evaluation_id:
            self._claims.append((result.evaluation_id, claims_payload(result)))
            self._wake.set()

    def catch_up(self, limit: int | None = None) -> int:
        """Index every new verified record (at most ``limit``); returns how many were indexed."""
        with self._lock:
            done = self._flush_claims()
            total = 0
            while limit is None or total < limit:
                n = self._pass(self.batch if limit is None else min(self.batch, limit - total))
                total += n
                if n == 0:
                    break
            if total or done:
                self.version += 1
            return total

    def _flush_claims(self) -> int:
        items = []
        while self._claims:
            items.append(self._claims.popleft())
        if not items:
            return 0
        db = self._db
        db.executemany("INSERT OR REPLACE INTO claims VALUES (?, ?)", items)
        # keep the newest max_claims rows (rowid grows with each insert)
        db.execute(
            "DELETE FROM claims WHERE rowid <= (SELECT MAX(rowid) FROM claims) - ?", (self.max_claims,)
        )
        db.commit()
        return len(items)

    def _segments(self) -> list[tuple[int, Path]]:
        return list_segments(self.log_dir) if self.log_dir.is_dir() else []

    def _pass(self, budget: int) -> int:
        """Read up to ``budget`` new complete lines, verify and index them in one transaction."""
        st = self.state
        if st.broken:
            return 0
        segments = self._segments()
        if not segments:
            return 0
        numbers = [n for n, _ in segments]
        if st.segment < 0:
            st.segment, st.offset, st.line_no = numbers[0], 0, 0
        elif st.segment not in numbers or (self._first_line_changed(segments)):
            log.warning("dashboard_index_rebuilt", reason="the log was replaced or rotated away under the index")
            self._reset()
            return self._pass(budget)
        ring = self.keyring()
        if ring is None:
            if not st.broken:
                st.broken = "no trusted key: pass --key, or the log's keys/ directory is empty"
            return 0
        acc = _Rollups()
        rows: list[tuple[Any, ...]] = []
        for number, path in segments:
            if number < st.segment:
                continue
            if number > st.segment:
                st.segment, st.offset, st.line_no = number, 0, 0
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                break
            if size < st.offset:  # shortened under the index: rebuild from the start
                self._reset()
                return 0
            if size == st.offset:
                continue
            with path.open("rb") as f:
                f.seek(st.offset)
                data = f.read(min(size - st.offset, 64 << 20))
            pos = 0
            while len(rows) < budget:
                nl = data.find(b"\n", pos)
                if nl < 0:
                    break  # a line still being written (or torn): wait for it
                raw = data[pos:nl]
                checked = check_record(raw, path, st.offset + pos, st.line_no + 1, st.next_seq, st.prev_hash, ring)
                if isinstance(checked, BadRecord):
                    st.broken = str(checked)
                    log.warning("dashboard_index_stopped", seq=checked.seq, segment=checked.segment, line=checked.line)
                    break
                dec, evidence_id, signer = checked
                rows.append(_row(dec, evidence_id, signer, number, st.offset + pos, len(raw), st.line_no + 1))
                acc.add(dec)
                if not st.first_evidence_id:
                    st.first_evidence_id, st.first_ts, st.first_segment = evidence_id, dec.timestamp, number
                st.last_ts, st.last_key_id = dec.timestamp, signer
                st.prev_hash = evidence_id
                st.next_seq += 1
                st.line_no += 1
                pos = nl + 1
            st.offset += pos
            if st.broken or len(rows) >= budget or st.offset < size:
                break
        if rows:
            db = self._db
            db.executemany("INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            acc.write(db)
        self._save_state()
        self._db.commit()
        return len(rows)

    def _first_line_changed(self, segments: list[tuple[int, Path]]) -> bool:
        """A log replaced by another (other record 0) under the same directory."""
        if not self.state.first_evidence_id or segments[0][0] != self.state.first_segment:
            return False
        from certus.sidecar.evidence.records import line_digest

        with segments[0][1].open("rb") as f:
            first = f.readline()
        return bool(first.endswith(b"\n")) and line_digest(first[:-1]) != self.state.first_evidence_id

    # -- background thread ------------------------------------------------------------------------

    def start(self, interval_s: float = 1.0) -> None:
        if self._thread is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.catch_up()
                except Exception as exc:  # noqa: BLE001 - keep serving what is indexed; say why
                    log.warning("dashboard_index_failed", error=repr(exc))
                self._wake.wait(interval_s)
                self._wake.clear()

        self._thread = threading.Thread(target=loop, name="dashboard-index", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            self._flush_claims()
            self._db.close()
            os.close(self._lock_fd)

    # -- queries ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        st = self.state
        return {
            "log_dir": str(self.log_dir),
            "records": st.next_seq,
            "first_timestamp": st.first_ts or None,
            "last_timestamp": st.last_ts or None,
            "last_evidence_id": st.prev_hash if st.next_seq else "",
            "key_id": st.last_key_id,
            "key_source": st.key_source,
            "broken": st.broken,
            "version": self.version,
        }

    def find(self, ident: str) -> dict[str, Any] | None:
        """The indexed decision whose evaluation_id or evidence_id is ``ident`` (the newest one)."""
        cols = _DECISION_COLS
        with self.reader() as db:
            row = db.execute(
                f"SELECT {', '.join(cols)} FROM decisions WHERE evidence_id = ? OR evaluation_id = ? "  # noqa: S608
                "ORDER BY seq DESC LIMIT 1",
                (ident, ident),
            ).fetchone()
            if row is None:
                return None
            out = dict(zip(cols, row))
            c = db.execute("SELECT data FROM claims WHERE evaluation_id = ?", (out["evaluation_id"],)).fetchone()
            out["claims"] = None if c is None else json.loads(c[0])
            nxt = db.execute("SELECT evidence_id FROM decisions WHERE seq = ?", (out["seq"] + 1,)).fetchone()
            out["next_evidence_id"] = nxt[0] if nxt else ""
        return out

    def recent(self, limit: int = 50, outcome: str = "", workspaces: Iterable[str] | None = None) -> list[dict[str, Any]]:
        cols = _DECISION_COLS[:10]
        where, args = _filters(workspaces=workspaces)
        if outcome:
            where.append("outcome = ?")
            args.append(outcome)
        sql = f"SELECT {', '.join(cols)} FROM decisions"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        with self.reader() as db:
            return [dict(zip(cols, r)) for r in db.execute(sql, (*args, int(limit))).fetchall()]

    def dimensions(self, workspaces: Iterable[str] | None = None) -> tuple[list[str], list[str]]:
        """The workspaces and manifests seen (for the filters)."""
        where, args = _filters(workspaces=workspaces)
        w = (" WHERE " + " AND ".join(where)) if where else ""
        with self.reader() as db:
            ws = [r[0] for r in db.execute(f"SELECT DISTINCT workspace FROM outcome_rollup{w} ORDER BY 1", args)]  # noqa: S608
            ms = [r[0] for r in db.execute(f"SELECT DISTINCT manifest FROM outcome_rollup{w} ORDER BY 1", args)]  # noqa: S608
        return ws, [m for m in ms if m]

    def overview(
        self,
        *,
        workspace: str = "",
        manifest: str = "",
        unit: str = "day",
        since_day: int | None = None,
        workspaces: Iterable[str] | None = None,
    ) -> "Overview":
        where, args = _filters(workspace=workspace, manifest=manifest, since_day=since_day, workspaces=workspaces)
        w = (" WHERE " + " AND ".join(where)) if where else ""
        with self.reader() as db:
            outcomes = db.execute(
                f"SELECT day, outcome, skip_reason, SUM(n) FROM outcome_rollup{w} GROUP BY day, outcome, skip_reason", args  # noqa: S608
            ).fetchall()
            by_dim = db.execute(
                f"SELECT workspace, manifest, outcome, SUM(n) FROM outcome_rollup{w} GROUP BY workspace, manifest, outcome", args  # noqa: S608
            ).fetchall()
            metrics = db.execute(f"SELECT day, metric, n, total, passed, hist FROM metric_rollup{w}", args).fetchall()  # noqa: S608
            violations = db.execute(
                f"SELECT guardrail_type, severity, SUM(n) FROM violation_rollup{w} GROUP BY guardrail_type, severity", args  # noqa: S608
            ).fetchall()
            violation_days = db.execute(
                f"SELECT day, guardrail_type, SUM(n) FROM violation_rollup{w} GROUP BY day, guardrail_type", args  # noqa: S608
            ).fetchall()
        return Overview.build(unit, outcomes, by_dim, metrics, violations, violation_days)


_DECISION_COLS = (
    "seq", "evaluation_id", "evidence_id", "ts", "workspace", "manifest", "outcome", "skip_reason", "overall",
    "violations", "key_id", "segment", "offset", "length", "line_no",
)


def _row(dec: IntegrityDecision, evidence_id: str, signer: str, segment: int, offset: int, length: int, line_no: int) -> tuple[Any, ...]:
    ts, _ = day_of(dec.timestamp)
    return (
        dec.seq, dec.decision_id, evidence_id, ts, dec.workspace_id, dec.manifest_uri, dec.outcome, dec.skip_reason,
        dec.overall_score, len(dec.guardrail_violations), signer, segment, offset, length, line_no,
    )


def _filters(
    *, workspace: str = "", manifest: str = "", since_day: int | None = None, workspaces: Iterable[str] | None = None
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if workspace:
        where.append("workspace = ?")
        args.append(workspace)
    if manifest:
        where.append("manifest = ?")
        args.append(manifest)
    if since_day is not None:
        where.append("day >= ?")
        args.append(since_day)
    if workspaces is not None:
        allowed = sorted(workspaces)
        where.append(f"workspace IN ({', '.join('?' * len(allowed)) or 'NULL'})")
        args.extend(allowed)
    return where, args


class _Rollups:
    """The rollup increments of one pass, written with one upsert per key."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[int, str, str, str, str], int] = {}
        self.metrics: dict[tuple[int, str, str, str], list[Any]] = {}
        self.violations: dict[tuple[int, str, str, str, str], int] = {}

    def add(self, dec: IntegrityDecision) -> None:
        _, day = day_of(dec.timestamp)
        ws, man = dec.workspace_id, dec.manifest_uri
        k = (day, ws, man, dec.outcome, dec.skip_reason if dec.skipped else "")
        self.outcomes[k] = self.outcomes.get(k, 0) + 1
        for m in dec.metrics:
            if m.error:
                continue
            mk = (day, ws, man, m.name)
            acc = self.metrics.get(mk)
            if acc is None:
                acc = self.metrics[mk] = [0, 0.0, 0, np.zeros(BINS, dtype=np.int64)]
            v = float(m.value)
            acc[0] += 1
            acc[1] += v
            acc[2] += int(m.passed)
            acc[3][min(BINS - 1, max(0, int(v * BINS)))] += 1
        for v in dec.guardrail_violations:
            vk = (day, ws, man, v.guardrail_type, v.severity)
            self.violations[vk] = self.violations.get(vk, 0) + 1

    def write(self, db: sqlite3.Connection) -> None:
        db.executemany(
            "INSERT INTO outcome_rollup VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*k, n) for k, n in self.outcomes.items()],
        )
        db.executemany(
            "INSERT INTO violation_rollup VALUES (?,?,?,?,?,?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
            [(*k, n) for k, n in self.violations.items()],
        )
        for k, (n, total, passed, hist) in self.metrics.items():
            old = db.execute(
                "SELECT hist FROM metric_rollup WHERE day = ? AND workspace = ? AND manifest = ? AND metric = ?", k
            ).fetchone()
            if old is not None:
                hist = hist + np.frombuffer(old[0], dtype=np.int64)
            db.execute(
                "INSERT INTO metric_rollup VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
                "n = n + excluded.n, total = total + excluded.total, passed = passed + excluded.passed, hist = excluded.hist",
                (*k, n, total, passed, hist.astype(np.int64).tobytes()),
            )


def bucket_of(day: int, unit: str) -> int:
    """The first day of ``day``'s bucket: itself, or the Monday of its ISO week."""
    if unit == "week":
        return day - ((day + 3) % 7)  # day 0 (1970-01-01) was a Thursday
    return day


def day_label(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_S, tz=timezone.utc).strftime("%Y-%m-%d")


def percentile(hist: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram over [0, 1], at the middle of its bin."""
    n = int(hist.sum())
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    i = int(np.searchsorted(np.cumsum(hist), rank))
    return (i + 0.5) / BINS


@dataclass
class MetricSeries:
    name: str
    buckets: list[int]
    count: list[int]
    mean: list[float | None]
    p10: list[float | None]
    p50: list[float | None]
    p90: list[float | None]
    pass_rate: list[float | None]
    total_count: int = 0
    total_mean: float | None = None
    total_p50: float | None = None
    total_pass_rate: float | None = None


@dataclass
class Overview:
    unit: str
    buckets: list[int]  # first day of each bucket, ascending
    outcome_counts: dict[str, list[int]]  # outcome -> count per bucket
    pass_rate: list[float | None]  # per bucket: (pass + warning) / scored
    totals: dict[str, int]
    skips: dict[str, int]  # skip reason -> count
    violations: list[tuple[str, str, int]]  # (type, severity, count), most first
    violation_series: dict[str, list[int]]  # type -> count per bucket
    by_dimension: list[dict[str, Any]]  # per (workspace, manifest): outcome counts, pass rate
    metrics: list[MetricSeries]

    @property
    def decisions(self) -> int:
        return sum(self.totals.values())

    @property
    def total_pass_rate(self) -> float | None:
        return pass_rate(self.totals)

    @property
    def labels(self) -> list[str]:
        return [day_label(b) for b in self.buckets]

    @classmethod
    def build(
        cls,
        unit: str,
        outcomes: list[tuple[int, str, str, int]],
        by_dim: list[tuple[str, str, str, int]],
        metrics: list[tuple[int, str, int, float, int, bytes]],
        violations: list[tuple[str, str, int]],
        violation_days: list[tuple[int, str, int]],
    ) -> "Overview":
        buckets = sorted({bucket_of(d, unit) for d, *_ in outcomes})
        pos = {b: i for i, b in enumerate(buckets)}
        counts: dict[str, list[int]] = {}
        totals: dict[str, int] = {}
        skips: dict[str, int] = {}
        for day, outcome, reason, n in outcomes:
            counts.setdefault(outcome, [0] * len(buckets))[pos[bucket_of(day, unit)]] += n
            totals[outcome] = totals.get(outcome, 0) + n
            if outcome == "skipped":
                skips[reason or "unknown"] = skips.get(reason or "unknown", 0) + n
        rates = [pass_rate({o: c[i] for o, c in counts.items()}) for i in range(len(buckets))]
        dims: dict[tuple[str, str], dict[str, Any]] = {}
        for ws, man, outcome, n in by_dim:
            d = dims.setdefault((ws, man), {"workspace": ws, "manifest": man or "-", "decisions": 0, "outcomes": {}})
            d["decisions"] += n
            d["outcomes"][outcome] = d["outcomes"].get(outcome, 0) + n
        for d in dims.values():
            d["pass_rate"] = pass_rate(d["outcomes"])
        vseries: dict[str, list[int]] = {}
        for day, gtype, n in violation_days:
            if bucket_of(day, unit) in pos:
                vseries.setdefault(gtype, [0] * len(buckets))[pos[bucket_of(day, unit)]] += n
        return cls(
            unit=unit,
            buckets=buckets,
            outcome_counts=counts,
            pass_rate=rates,
            totals=totals,
            skips=dict(sorted(skips.items(), key=lambda kv: -kv[1])),
            violations=sorted(((t, s, int(n)) for t, s, n in violations), key=lambda r: -r[2]),
            violation_series=vseries,
            by_dimension=sorted(dims.values(), key=lambda d: -d["decisions"]),
            metrics=_metric_series(metrics, unit, buckets, pos),
        )


def _metric_series(
    rows: list[tuple[int, str, int, float, int, bytes]], unit: str, buckets: list[int], pos: dict[int, int]
) -> list[MetricSeries]:
    acc: dict[str, list[Any]] = {}  # name -> [n per bucket, sum per bucket, passed per bucket, hist per bucket]
    for day, name, n, total, passed, hist in rows:
        b = pos.get(bucket_of(day, unit))
        if b is None:
            continue
        a = acc.get(name)
        if a is None:
            a = acc[name] = [np.zeros(len(buckets), np.int64), np.zeros(len(buckets)), np.zeros(len(buckets), np.int64), np.zeros((len(buckets), BINS), np.int64)]
        a[0][b] += n
        a[1][b] += total
        a[2][b] += passed
        a[3][b] += np.frombuffer(hist, dtype=np.int64)
    out = []
    for name in sorted(acc):
        n, total, passed, hist = acc[name]
        series = MetricSeries(
            name=name,
            buckets=buckets,
            count=[int(x) for x in n],
            mean=[float(t / c) if c else None for t, c in zip(total, n)],
            p10=[percentile(h, 0.10) for h in hist],
            p50=[percentile(h, 0.50) for h in hist],
            p90=[percentile(h, 0.90) for h in hist],
            pass_rate=[float(p / c) if c else None for p, c in zip(passed, n)],
        )
        all_n = int(n.sum())
        series.total_count = all_n
        series.total_mean = float(total.sum() / all_n) if all_n else None
        series.total_p50 = percentile(hist.sum(axis=0), 0.5)
        series.total_pass_rate = float(passed.sum() / all_n) if all_n else None
        out.append(series)
    return out


def read_line(log_dir: Path, segment: int, offset: int, length: int) -> bytes:
    """The bytes of one indexed record (its line without the newline)."""
    from certus.sidecar.evidence.records import segment_name

    with (log_dir / segment_name(segment)).open("rb") as f:
        f.seek(offset)
        return f.read(length)


def now_day() -> int:
    return int(time.time() // DAY_S)
