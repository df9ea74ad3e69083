"""Several gRPC front-end processes that share one batching encoder and one evidence log.

One Python process runs guardrails, scoring and policy under one GIL. With ``server.frontends = N``
(``CERTUS_FRONTENDS``) the process started by ``certus-sidecar serve`` becomes the **hub**: it keeps
everything that must exist once — the encoder and its :class:`~sidecar.batcher.Batcher` (so a batch
fills with the texts of every caller of every process), the evidence log (one hash chain, one
writer), the forwarder, the async job table, REST, the dashboard and the metrics endpoint — and
serves gRPC itself. It starts N - 1 **front-end** processes (``python -m
certus.sidecar.server.frontends``) that listen on the same ``server.address`` with SO_REUSEPORT (the
kernel spreads new connections across the N listeners) and run the whole request path of
:class:`~sidecar.pipeline.Pipeline` locally, except:

- texts to encode go to the hub's batcher (:class:`RemoteBatcher`; each front-end keeps its own
  embedding and token-state caches, so a cached chunk costs no round trip);
- every decision is signed and appended by the hub's evidence log (:class:`RemoteEvidence`), and
  the front-end answers only once it is durable there, as in one process;
- async-mode evaluations run in the hub (its job table answers GetEvaluation from any process);
- GetInfo reports the hub's state (key, model, log, batcher) plus the front-end's own ids;
- admission is one over all processes: each publishes its calls in flight and its service rate in
  its slot of a file in the hub's directory (:class:`~sidecar.admission.PeerSlots`) and admits
  against the sums.

The hub talks to front-ends over a Unix stream socket in a fresh 0700 directory of the hub's user:
frames of an 8-byte length and a pickle (protocol 5; both ends are this package, run by the same
user). A request is ``(id, op, args)`` and its answer ``(id, ok, value)``; the hub pushes
``(0, "health", (serving, reason))`` when the evidence log fails or repairs itself. The supervisor
restarts a front-end that dies (after 1 s, then up to 30 s between attempts); SIGTERM to the hub stops
every front-end gracefully (in-flight calls finish: they still need the hub) before the hub stops.

Limits: per-workspace rate limits would be counted per process, so ``auth.rate_limit_rps`` with
more than one front-end is refused at start; the dashboard's live claims cover the hub's own share
of the requests (the evidence log, which its other pages read, has all). The hub's Prometheus
endpoint asks every front-end for its request metrics at scrape time and adds them into its own
(:class:`MergedMetrics`; the hub also asks over the socket: frames with a negative id).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pickle
import shutil
import signal
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import structlog
from grpc_health.v1._async import HealthServicer

from certus.sidecar import policy
from certus.sidecar.admission import Admission, PeerSlots
from certus.sidecar.batcher import BatcherStats, SyncCalls, text_caches
from certus.sidecar.cache import text_key
from certus.sidecar.config import BatcherConfig, Config
from certus.sidecar.domain import EvaluateInput, EvaluationResult, Mode
from certus.sidecar.errors import CertusError, Fatal, Unavailable
from certus.sidecar.evidence.decision import IntegrityDecision
from certus.sidecar.guardrails import GuardrailSuite
from certus.sidecar.manifests import ManifestStore
from certus.sidecar.memory import GC_PAUSES, MemoryReclaimer
from certus.sidecar.metrics import Metrics, gc_families
from certus.sidecar.pipeline import Pipeline
from certus.sidecar.scoring import Scorer
from certus.sidecar.security import AccessControl, server_credentials
from certus.sidecar.server.app import Serving, bind, grpc_server, pii_details

log = structlog.get_logger(__name__)

_LEN = struct.Struct(">Q")
HUB_GONE = "the hub process is gone (the sidecar is stopping)"
READY_TIMEOUT_S = 600.0  # a front-end loads the PII analyzer and warms its kernels before it is ready
RESTART_DELAY_S = (1.0, 30.0)  # first and longest wait before a dead front-end is started again


class FrontendsRefused(Fatal):
    """A setting that cannot work with several front-end processes."""


def check_config(cfg: Config) -> None:
    """Refuse what several front-ends cannot do; each message names the setting."""
    n = cfg.server.frontends
    if n < 1:
        raise FrontendsRefused(f"server.frontends (CERTUS_FRONTENDS) must be >= 1, got {n}")
    if n > 1 and cfg.auth.rate_limit_rps > 0:
        raise FrontendsRefused(
            "server.frontends > 1 with auth.rate_limit_rps (CERTUS_RATE_LIMIT_RPS) set: each process "
            "would count its own share, so a workspace could get up to frontends x its limit; use one front-end"
        )


# -- wire ----------------------------------------------------------------------------------------


def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=5)
    return _LEN.pack(len(data)) + data


async def _read(reader: asyncio.StreamReader) -> Any:
    (n,) = _LEN.unpack(await reader.readexactly(_LEN.size))
    return pickle.loads(await reader.readexactly(n))


def _error_state(exc: BaseException) -> tuple[type, tuple[Any, ...], dict[str, Any]]:
    """An exception as (class, args, attributes): CertusError subclasses take other constructor
    arguments than their ``args`` (InvalidArgument's violations, ResourceExhausted's retry), so
    they are rebuilt field by field instead of through their constructor."""
    if not isinstance(exc, CertusError):  # a fault of the hub itself: the caller may retry
        return Unavailable, (f"hub: {type(exc).__name__}",), {"retry_after_ms": 1000}
    return type(exc), exc.args, dict(exc.__dict__)


def _rebuild_error(state: tuple[type, tuple[Any, ...], dict[str, Any]]) -> BaseException:
    cls, args, attrs = state
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(attrs)
    return exc


class _Connection:
    """One framed, ordered byte stream; writes from any coroutine of its loop."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._drain = asyncio.Lock()

    async def send(self, obj: Any) -> None:
        self.writer.write(_frame(obj))
        async with self._drain:
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class _Pending:
    """Questions sent over one connection, matched to their answers by id. Both ends ask: the
    front-end numbers its questions 1, 2, ..., the hub its own -1, -2, ... (``step``), so one
    stream carries both; id 0 is the hub's unasked pushes (health)."""

    def __init__(self, step: int) -> None:
        self._step, self._last = step, 0
        self._futures: dict[int, asyncio.Future[tuple[bool, Any]]] = {}

    async def ask(self, conn: _Connection, op: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """Send ``(id, op, args)`` and wait for its ``(ok, value)``."""
        self._last += self._step
        rid = self._last
        fut = asyncio.get_running_loop().create_future()
        self._futures[rid] = fut
        try:
            await conn.send((rid, op, args))
            return await fut
        finally:
            self._futures.pop(rid, None)

    def answered(self, rid: int, ok: bool, value: Any) -> None:
        fut = self._futures.get(rid)
        if fut is not None and not fut.done():
            fut.set_result((ok, value))

    def fail_all(self, exc: BaseException) -> None:
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(exc)


# -- the hub (in the process `certus-sidecar serve` started) ---------------------------------------


@dataclasses.dataclass
class _Child:
    index: int
    proc: asyncio.subprocess.Process | None = None
    pid: int = 0
    ready: asyncio.Future[None] | None = None
    conn: _Connection | None = None
    restarts: int = 0


class Hub:
    """Serves the hub's batcher, evidence log, job table and info to the front-end processes, and
    supervises them."""

    def __init__(self, app: Any, port: int) -> None:
        self.app = app
        self.cfg: Config = app.cfg
        self.port = port
        self._dir = Path(tempfile.mkdtemp(prefix="certus-hub-"))  # mode 0700: only this user connects
        self.path = str(self._dir / "hub.sock")
        # every process's calls in flight and service rate, for one admission over all of them
        self.peers_path = str(self._dir / "admission.f64")
        PeerSlots.create(self.peers_path, self.cfg.server.frontends)
        self._peers = PeerSlots(self.peers_path, self.cfg.server.frontends, 0)
        self._server: asyncio.AbstractServer | None = None
        self._children = [_Child(i) for i in range(1, self.cfg.server.frontends)]
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conns: set[_Connection] = set()
        self._asks = _Pending(-1)  # the hub's own questions to front-ends
        self._loop: asyncio.AbstractEventLoop | None = None
        self.requests = 0

    @property
    def pids(self) -> list[int]:
        return [c.pid for c in self._children]

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self._children)

    async def start(self) -> None:
        """Listen, start every front-end and wait until each serves on the port (or fail, naming it)."""
        loop = self._loop = asyncio.get_running_loop()
        self.app.pipeline.admission.peers = self._peers
        self._server = await asyncio.start_unix_server(self._serve_conn, path=self.path, limit=1 << 20)
        os.chmod(self.path, 0o600)
        self.app.evidence.add_state_listener(
            lambda healthy, reason: loop.call_soon_threadsafe(self._push_health, healthy, reason)
        )
        for child in self._children:
            self._spawn(child)
        pending = [c.ready for c in self._children if c.ready is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*pending), READY_TIMEOUT_S)
        except BaseException:
            await self.stop(0.0)
            raise
        for child in self._children:  # from now on a dead front-end is started again
            self._keep(asyncio.create_task(self._supervise(child)))
        log.info("frontends_ready", frontends=self.cfg.server.frontends, pids=self.pids)

    def _keep(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, child: _Child) -> None:
        child.ready = asyncio.get_running_loop().create_future()
        self._keep(asyncio.create_task(self._start_process(child)))

    async def _start_process(self, child: _Child) -> None:
        try:
            child.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "certus.sidecar.server.frontends", self.path, str(child.index),
                "1" if self.cfg.server.use_uvloop else "0",
                stdin=asyncio.subprocess.DEVNULL,
            )
            child.pid = child.proc.pid
            code = await child.proc.wait()
        except Exception as exc:  # noqa: BLE001 - reported through the ready future
            code, error = None, exc
        else:
            error = None
        if child.ready is not None and not child.ready.done():
            child.ready.set_exception(
                Fatal(f"server.frontends: front-end {child.index} exited with {code} before serving")
                if error is None
                else Fatal(f"server.frontends: cannot start front-end {child.index}: {error}")
            )

    async def _supervise(self, child: _Child) -> None:
        delay = RESTART_DELAY_S[0]
        while not self._stopping:
            proc = child.proc
            if proc is None or proc.returncode is not None:
                if self._stopping:
                    return
                log.error("frontend_died", index=child.index, pid=child.pid, exit_code=proc.returncode if proc else None)
                self._peers.clear(child.index)  # its calls in flight are gone with it
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                child.restarts += 1
                self._spawn(child)
                try:
                    assert child.ready is not None
                    await asyncio.wait_for(asyncio.shield(child.ready), READY_TIMEOUT_S)
                    delay = RESTART_DELAY_S[0]
                    log.warning("frontend_restarted", index=child.index, pid=child.pid)
                except Exception as exc:  # noqa: BLE001 - try again, waiting longer
                    log.error("frontend_restart_failed", index=child.index, error=str(exc))
                    delay = min(RESTART_DELAY_S[1], delay * 2)
                continue
            await asyncio.sleep(0.2)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM every front-end, let them finish their calls (they need the hub meanwhile), then
        close the socket. One that has not exited after the grace period and 10 s more is killed."""
        self._stopping = True
        procs = [c.proc for c in self._children if c.proc is not None and c.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), grace_s + 10.0)
            except asyncio.TimeoutError:
                log.error("frontend_killed", pid=proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            await conn.close()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self.app.pipeline.admission.peers = None  # alone again: its own count
        shutil.rmtree(self._dir, ignore_errors=True)

    def gather(self, op: str, timeout_s: float = 2.0) -> list[Any]:
        """Ask every running front-end ``op`` (from any thread but the hub's loop); each answer, or
        None for one that did not answer within ``timeout_s``."""
        if self._loop is None:
            return []
        return asyncio.run_coroutine_threadsafe(self._ask_all(op, timeout_s), self._loop).result(timeout_s + 5.0)

    async def _ask_all(self, op: str, timeout_s: float) -> list[Any]:
        async def ask(child: _Child) -> Any:
            conn = child.conn
            if conn is None or child.proc is None or child.proc.returncode is not None:
                return None
            try:
                ok, value = await asyncio.wait_for(self._asks.ask(conn, op, ()), timeout_s)
            except Exception as exc:  # noqa: BLE001 - a front-end that cannot answer is left out
                log.warning("frontend_no_answer", index=child.index, op=op, error_type=type(exc).__name__)
                return None
            return value if ok else None

        return list(await asyncio.gather(*(ask(c) for c in self._children)))

    def _push_health(self, healthy: bool, reason: str) -> None:
        for conn in list(self._conns):
            self._keep(asyncio.create_task(self._quiet_send(conn, (0, "health", (healthy, reason)))))

    async def _quiet_send(self, conn: _Connection, msg: Any) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await conn.send(msg)

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer)
        self._conns.add(conn)
        try:
            while True:
                try:
                    rid, op, args = await _read(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if rid < 0:  # a front-end's answer to one of the hub's questions: (rid, ok, value)
                    self._asks.answered(rid, op, args)
                    continue
                self._keep(asyncio.create_task(self._answer(conn, rid, op, args)))
        finally:
            self._conns.discard(conn)
            await conn.close()

    async def _answer(self, conn: _Connection, rid: int, op: str, args: tuple[Any, ...]) -> None:
        self.requests += 1
        try:
            value = await getattr(self, f"_op_{op}")(conn, *args)
            reply = (rid, True, value)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the asking front-end
            reply = (rid, False, _error_state(exc))
        await self._quiet_send(conn, reply)

    # -- operations a front-end may ask for ------------------------------------------------------
    async def _op_hello(self, conn: _Connection, index: int, pid: int) -> tuple[Config, int, int, str, bool, str]:
        child = self._children[index - 1]
        child.conn, child.pid = conn, pid
        ev = self.app.evidence
        return self.cfg, self.port, self.app.batcher.encoder.dim, self.peers_path, ev.healthy, ev.failure_reason

    async def _op_ready(self, conn: _Connection, index: int) -> None:
        child = self._children[index - 1]
        if child.ready is not None and not child.ready.done():
            child.ready.set_result(None)

    async def _op_embed(self, conn: _Connection, texts: list[str], tokens: bool) -> tuple[Any, Any, float]:
        batcher = self.app.batcher
        if tokens:
            vecs, states = await batcher.embed_tokens(texts)
        else:
            vecs, states = await batcher.embed(texts), None
        return vecs, states, batcher.estimated_wait_s()

    async def _op_append(self, conn: _Connection, decision: IntegrityDecision) -> str:
        evidence_id, _ = await self.app.evidence.append(decision)
        return evidence_id

    async def _op_evaluate(
        self, conn: _Connection, inp: EvaluateInput, grpc_deadline_ms: int | None, is_admin: bool
    ) -> EvaluationResult:
        return await self.app.pipeline.evaluate(inp, grpc_deadline_ms=grpc_deadline_ms, is_admin=is_admin)

    async def _op_job(self, conn: _Connection, evaluation_id: str, workspace_id: str) -> Any:
        return await self.app.job_view(evaluation_id, workspace_id)

    async def _op_info(self, conn: _Connection) -> tuple[dict[str, Any], bytes]:
        return await self.app.get_info()


# -- a front-end process -------------------------------------------------------------------------


class HubClient:
    """The front-end's end of the hub socket: concurrent requests matched to answers by id."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self._pending = _Pending(1)
        self.on_health: Any = None  # callable(healthy, reason)
        self.on_request: Any = None  # callable(op) -> value: the hub's questions (metrics)
        self._answers: set[asyncio.Task[None]] = set()
        self.lost = asyncio.get_running_loop().create_future()  # set when the hub goes away
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def connect(cls, path: str) -> "HubClient":
        reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
        return cls(_Connection(reader, writer))

    async def request(self, op: str, *args: Any) -> Any:
        if self.lost.done():
            raise Unavailable(HUB_GONE)
        ok, value = await self._pending.ask(self.conn, op, args)
        if not ok:
            raise _rebuild_error(value)
        return value

    async def _read_loop(self) -> None:
        try:
            while True:
                rid, first, value = await _read(self.conn.reader)
                if rid < 0:  # the hub asks: (rid, op, args)
                    task = asyncio.create_task(self._answer_hub(rid, first))
                    self._answers.add(task)
                    task.add_done_callback(self._answers.discard)
                    continue
                if rid == 0:
                    if first == "health" and self.on_health is not None:
                        self.on_health(*value)
                    continue
                self._pending.answered(rid, first, value)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._pending.fail_all(Unavailable(HUB_GONE))
            if not self.lost.done():
                self.lost.set_result(None)

    async def _answer_hub(self, rid: int, op: str) -> None:
        try:
            value, ok = self.on_request(op), True
        except Exception as exc:  # noqa: BLE001 - the hub leaves this process out of its answer
            log.warning("hub_question_failed", op=op, error_type=type(exc).__name__)
            value, ok = None, False
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.conn.send((rid, ok, value))

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.conn.close()


class RemoteBatcher(SyncCalls):
    """The :class:`~sidecar.batcher.Batcher` API over the hub's batcher: texts missing from this
    process's caches are sent in one request per call (a text another call of this process is
    already fetching is awaited, not sent again); the hub merges them with every other process's."""

    def __init__(self, hub: HubClient, cfg: BatcherConfig, dim: int) -> None:
        self.hub = hub
        self.cfg = cfg
        self.dim = dim
        self.cache, self.token_cache = text_caches(cfg)
        self.stats = BatcherStats()  # here: round trips (batches) and texts sent to the hub
        # text key -> (the fetch carrying it, its position there); a fetch with token states
        # serves both kinds of caller, one without only callers of embed()
        self._with_tokens: dict[bytes, tuple[asyncio.Future[Any], int]] = {}
        self._vectors: dict[bytes, tuple[asyncio.Future[Any], int]] = {}
        self._wait_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        pass

    @property
    def queue_depth(self) -> int:
        return len(self._with_tokens) + len(self._vectors)

    def estimated_wait_s(self) -> float:
        """The hub's estimate at its last answer."""
        return self._wait_s

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        return (await self._embed(texts, False))[0]

    async def embed_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Any]]:
        return await self._embed(texts, True)

    async def _embed(self, texts: Sequence[str], tokens: bool) -> tuple[np.ndarray, list[Any]]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        states: list[Any] = [None] * len(texts)
        waits: list[tuple[int, asyncio.Future[Any], int]] = []
        send: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            key = text_key(text)
            hit = self._cached(key, tokens)
            if hit is not None:
                out[i], states[i] = hit
                continue
            shared = self._with_tokens.get(key) or (None if tokens else self._vectors.get(key))
            if shared is not None:
                waits.append((i, *shared))
            else:
                send.setdefault(key, []).append(i)
        if send:
            keys = list(send)
            fetch = asyncio.ensure_future(self._fetch(keys, [texts[send[k][0]] for k in keys], tokens))
            pending = self._with_tokens if tokens else self._vectors
            for pos, key in enumerate(keys):
                pending[key] = (fetch, pos)
                waits.extend((i, fetch, pos) for i in send[key])
        for i, fetch, pos in waits:
            vecs, sts = await asyncio.shield(fetch)
            out[i] = vecs[pos]
            if tokens:
                states[i] = sts[pos]
        return out, states

    async def _fetch(self, keys: list[bytes], texts: list[str], tokens: bool) -> tuple[np.ndarray, Any]:
        pending = self._with_tokens if tokens else self._vectors
        self.stats.batches += 1
        self.stats.batch_size_sum += len(texts)
        try:
            vecs, states, self._wait_s = await self.hub.request("embed", texts, tokens)
        finally:
            for key in keys:
                pending.pop(key, None)
        for pos, key in enumerate(keys):
            self.cache.put(key, vecs[pos])
            if tokens:
                self.token_cache.put(key, states[pos])
        self.stats.texts_encoded += len(texts)
        return vecs, states


class RemoteEvidence:
    """The pipeline's evidence sink: the hub signs, chains and makes each decision durable."""

    def __init__(self, hub: HubClient, healthy: bool, reason: str) -> None:
        self.hub = hub
        self.healthy = healthy
        self.failure_reason = reason

    async def append(self, decision: IntegrityDecision) -> tuple[str, None]:
        return await self.hub.request("append", decision), None


class FrontendPipeline(Pipeline):
    """The pipeline with async-mode evaluations handed to the hub, whose job table every process reads."""

    def __init__(self, hub: HubClient, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.hub = hub

    async def evaluate(  # type: ignore[override]
        self, inp: EvaluateInput, *, grpc_deadline_ms: int | None = None, is_admin: bool = True
    ) -> EvaluationResult:
        manifest = self.manifests.resolve(inp.workspace_id, inp.manifest_uri)
        if policy.effective_mode(manifest, inp.mode, is_admin) is Mode.ASYNC:
            return await self.hub.request("evaluate", inp, grpc_deadline_ms, is_admin)
        return await super().evaluate(inp, grpc_deadline_ms=grpc_deadline_ms, is_admin=is_admin)


class FrontendApp(Serving):
    """What the servicer needs of an app, in a front-end process."""

    def __init__(self, cfg: Config, index: int, hub: HubClient, dim: int, peers_path: str) -> None:
        self.cfg = cfg
        self.peers_path = peers_path
        self.index = index
        self.hub = hub
        self.health = HealthServicer()
        self.metrics = Metrics(cfg.telemetry.metrics_max_workspaces)
        self.access = AccessControl.from_config(cfg)
        self.batcher = RemoteBatcher(hub, cfg.batcher, dim)
        self.manifests = ManifestStore(cfg.manifests)
        self.evidence = RemoteEvidence(hub, False, "starting")
        self.guardrails: GuardrailSuite | None = None
        self.pipeline: FrontendPipeline | None = None
        self._health_tasks: set[asyncio.Task[None]] = set()
        self.reclaimer = MemoryReclaimer(cfg.server.memory_reclaim_interval_s, cfg.server.memory_reclaim_growth_mib)

    async def start(self, healthy: bool, reason: str) -> None:
        cfg = self.cfg
        await self.batcher.start()
        self.manifests.start()
        loop = asyncio.get_running_loop()
        self.guardrails = await loop.run_in_executor(
            None,
            lambda: GuardrailSuite(
                embed=self.batcher.embed_sync,
                pii_ner=cfg.guardrails.pii_ner,
                pii_process=cfg.guardrails.pii_process,
                token_states=self.batcher.token_states_sync,
                pii_ner_model=cfg.guardrails.pii_ner_model,
            ),
        )
        admission = Admission(cfg.server.admission_target_ms, min_in_flight=cfg.server.admission_min_in_flight)
        admission.peers = PeerSlots(self.peers_path, cfg.server.frontends, self.index)
        self.scorer = Scorer(cfg.scoring)
        self.pipeline = FrontendPipeline(
            self.hub,
            self.batcher,  # type: ignore[arg-type]
            self.scorer,
            self.guardrails,
            self.manifests,
            self.evidence,
            None,  # type: ignore[arg-type] - async jobs live in the hub
            stage_threads=cfg.server.stage_threads,
            metrics=self.metrics,
            admission=admission,
        )
        self.hub.on_health = self._on_health
        self.hub.on_request = self._on_hub_request
        manifests = self.manifests  # workspaces with a manifest keep their metric label, as in the hub
        self.metrics.workspace_label.known = lambda ws: manifests.resolve(ws).workspace_id == ws
        await self.warm()  # before this process listens
        self.reclaimer.start()  # as in the hub: memory back after a burst
        await self.set_health(healthy, reason)

    def _on_hub_request(self, op: str) -> Any:
        if op == "metrics":  # this process's request metrics and gc counters, for the hub's endpoint to add in
            return [*self.metrics.registry.collect(), *gc_families()]
        raise ValueError(f"unknown question {op!r}")

    def _on_health(self, serving: bool, reason: str) -> None:  # the hub's push, on this loop
        task = asyncio.ensure_future(self.set_health(serving, reason))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def set_health(self, serving: bool, reason: str = "") -> None:
        """The hub's evidence log state, as in one process: NOT_SERVING while it cannot record."""
        self.evidence.healthy, self.evidence.failure_reason = serving, reason
        await self.set_status(serving)

    # -- what the servicer calls besides Serving's -------------------------------------------------

    async def job_view(self, evaluation_id: str, workspace_id: str) -> Any:
        return await self.hub.request("job", evaluation_id, workspace_id)

    async def get_info(self) -> tuple[dict[str, Any], bytes]:
        info, public_key = await self.hub.request("info")
        details = info["details"]
        for k in [k for k in details if k.startswith(("admission.", "manifests.", "ratelimit.", "pii.", "gc."))]:
            del details[k]  # the hub's own: this process's replace them
        assert self.pipeline is not None and self.guardrails is not None
        details.update(pii_details(self.guardrails))
        details.update(GC_PAUSES.details())
        details.update({f"admission.{k}": v for k, v in self.pipeline.admission.stats().items()})
        details.update({f"manifests.{k}": v for k, v in self.manifests.health_details().items()})
        details.update({f"frontend.local_{k}": v for k, v in self.batcher.stats.as_dict().items()})
        details["frontend.index"] = self.index
        details["frontend.pid"] = os.getpid()
        details["frontend.local_cache_hit_ratio"] = round(self.batcher.cache.hit_ratio, 4)
        return info, public_key

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await self.reclaimer.stop()
        if self.pipeline is not None:
            await self.pipeline.close()
        if self.guardrails is not None:
            await loop.run_in_executor(None, self.guardrails.close)
        self.manifests.stop()


class MergedMetrics:
    """The hub's metrics endpoint with several front-ends: the hub's own metrics with each front-end's
    request metrics (counters, histograms, gauges) added in sample by sample at scrape time, so
    ``certus_evaluate_*`` counts every call whichever process answered it. A front-end that does not
    answer within 2 s is left out of that scrape (and logged). Registered with no names, so
    ``name[]`` filters still apply."""

    MERGED = frozenset({"counter", "gauge", "histogram", "summary"})

    def __init__(self, base: Any, app: Any) -> None:
        self.base = base
        self.app = app

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> list[Any]:
        from prometheus_client.metrics_core import Metric

        own = list(self.base.collect())
        hub = self.app.hub
        if hub is None:
            return own
        by_name = {m.name: m for m in own}
        for families in hub.gather("metrics"):
            for fam in families or ():
                if fam.type not in self.MERGED:
                    continue
                target = by_name.get(fam.name)
                if target is None:
                    target = by_name[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                    own.append(target)
                at = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(target.samples)}
                for sample in fam.samples:
                    if sample.name.endswith("_created"):  # a timestamp, not an amount
                        continue
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    i = at.get(key)
                    if i is None:
                        at[key] = len(target.samples)
                        target.samples.append(sample)
                    else:
                        target.samples[i] = target.samples[i]._replace(value=target.samples[i].value + sample.value)
        return own


def metrics_registry(app: Any) -> Any:
    """What the hub's metrics endpoint serves (the app's own registry with one front-end)."""
    if app.cfg.server.frontends <= 1:
        return app.metrics.registry
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    registry.register(MergedMetrics(app.metrics.registry, app))
    return registry


async def run_frontend(path: str, index: int) -> int:
    """A front-end's life: hello to the hub, build, warm up, listen on the hub's port, report ready,
    serve until SIGTERM (or until the hub is gone), drain, exit."""
    from certus.sidecar.telemetry import configure_logging, configure_tracing

    hub = await HubClient.connect(path)
    cfg, port, dim, peers_path, healthy, reason = await hub.request("hello", index, os.getpid())
    configure_logging(cfg.telemetry)
    configure_tracing(cfg.telemetry)
    app = FrontendApp(cfg, index, hub, dim, peers_path)
    await app.start(healthy, reason)
    server = grpc_server(cfg, app)
    host = cfg.server.address.rsplit(":", 1)[0]
    bind(server, "server.address", f"{host}:{port}", server_credentials(cfg.auth))
    await server.start()
    await hub.request("ready", index)
    log.info("frontend_serving", index=index, port=port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    lost = asyncio.ensure_future(asyncio.shield(hub.lost))
    waiter = asyncio.ensure_future(stop.wait())
    await asyncio.wait({lost, waiter}, return_when=asyncio.FIRST_COMPLETED)
    gone = hub.lost.done()
    await app.health.enter_graceful_shutdown()
    await server.stop(cfg.server.grace_s if not gone else 0)
    await app.close()
    await hub.close()
    for task in (lost, waiter):
        task.cancel()
    log.info("frontend_stopped", index=index, hub_gone=gone)
    return 1 if gone else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m certus.sidecar.server.frontends HUB_SOCKET INDEX UVLOOP(0|1) (started by the hub)", file=sys.stderr)
        return 2
    path, index = argv[0], int(argv[1])
    if argv[2] == "1":
        import uvloop

        uvloop.install()
    return asyncio.run(run_frontend(path, index))


if __name__ == "__main__":
    sys.exit(main())
