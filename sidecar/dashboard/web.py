"""The web dashboard: server-rendered pages over the verified evidence index.

Stack: Starlette (routing, forms, static files; already the REST API's framework) with Jinja2
templates (autoescaped), charts drawn as inline SVG by matplotlib on the server (``charts.py``), one
stylesheet served from the package. No JavaScript framework, nothing loaded from the internet
(the Content-Security-Policy allows only this origin). Chosen because each part is small,
well kept and already pinned in the serving locks, and server-rendered HTML is what a browser test
can assert on directly.

Pages: Overview (``/``), Evidence (``/evidence``), decision drill-down (``/decisions``), Calibration
(``/calibration``), Reports (``/reports``); ``/api/status`` answers JSON. Page views read the index
(``index.py``) and the sidecar's own state, never the log's full length; the long runs (a full
``verify``, a calibration, a report) are jobs in one worker thread, and their pages refresh until
they finish.

Access: open on loopback when the sidecar has no auth configured. With tokens or JWT keys every
page needs a bearer token (``Authorization`` header, or the ``/login`` form, which keeps it in an
HttpOnly, SameSite=Strict cookie, Secure under TLS). A token scoped to some workspaces sees only
those in the overview and the drill-down; the evidence, calibration and report pages (the whole
log) need ``workspace:admin`` on ``*``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from certus.sidecar import __version__
from certus.sidecar.config import DEFAULT_HOME, Config
from certus.sidecar.dashboard import charts
from certus.sidecar.dashboard.index import EvidenceIndex, IndexInUse, now_day, read_line
from certus.sidecar.errors import Fatal, Unauthenticated
from certus.sidecar.evidence.checkpoint import CheckpointError, CheckpointStore
from certus.sidecar.evidence.decision import DecisionError, IntegrityDecision
from certus.sidecar.evidence.records import RecordError, parse_line, segment_name
from certus.sidecar.security.access import Authenticator
from certus.sidecar.security.tokens import ALL_WORKSPACES, SCOPE_ADMIN, Identity
from certus.sidecar.signing import VerifyKey

log = structlog.get_logger(__name__)

COOKIE = "certus_dashboard"
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
RANGES = {"7": 7, "30": 30, "90": 90, "365": 365, "all": None}
CHART_TTL_S = 15.0  # a busy log bumps the index every second: charts are redrawn at most this often
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'none'; form-action 'self'; frame-ancestors 'none'"


class _NeedLogin(Exception):
    pass


class _Forbidden(Exception):
    pass


@dataclass
class Job:
    id: str
    kind: str  # verify | calibration | report
    title: str
    status: str = "running"  # running | done | failed
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    error: str = ""
    workdir: Path | None = None

    @property
    def seconds(self) -> float:
        return round((self.finished or time.time()) - self.started, 1)


class Jobs:
    """The long runs pages trigger, one at a time in a worker thread; the newest 50 are kept."""

    def __init__(self, root: Path, keep: int = 50) -> None:
        self.root = root
        self.keep = keep
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dashboard-jobs")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, title: str, fn: Callable[[Job], Any]) -> Job:
        job = Job(uuid.uuid4().hex[:12], kind, title)
        job.workdir = self.root / kind / job.id
        job.workdir.mkdir(parents=True, exist_ok=True)

        def run() -> None:
            try:
                job.result = fn(job)
                job.status = "done"
            except Exception as exc:  # noqa: BLE001 - shown on the job's page
                job.error = str(exc) or type(exc).__name__
                job.status = "failed"
                log.warning("dashboard_job_failed", kind=kind, job=job.id, error=type(exc).__name__)
            job.finished = time.time()

        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                _, old = self._jobs.popitem(last=False)
                if old.workdir is not None:
                    shutil.rmtree(old.workdir, ignore_errors=True)
        self._pool.submit(run)
        return job

    def get(self, job_id: str, kind: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.kind == kind else None

    def of(self, kind: str) -> list[Job]:
        """This kind's runs, newest first."""
        return [j for j in reversed(self._jobs.values()) if j.kind == kind]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _Headers(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("Cache-Control", "no-store")
        return response


def default_state_dir(cfg: Config) -> Path:
    return Path(cfg.dashboard.state_dir) if cfg.dashboard.state_dir else DEFAULT_HOME / "dashboard"


class Dashboard:
    """The dashboard over one evidence log. ``app`` is the running sidecar when it runs inside it
    (forwarder, signing key and claim spans come from there); ``None`` for ``certus-sidecar dashboard``."""

    def __init__(
        self,
        cfg: Config,
        *,
        log_dir: Path | None = None,
        keys: Sequence[VerifyKey] | None = None,
        app: Any = None,
        authenticator: Authenticator | None = None,
        encoder_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.app = app
        self.log_dir = Path(log_dir or cfg.evidence.log_dir)
        self.keys = list(keys) if keys else None
        self.authenticator = authenticator
        self.encoder_factory = encoder_factory
        self.tls = cfg.auth.tls_cert is not None
        state = default_state_dir(cfg)
        tag = hashlib.sha256(str(self.log_dir.resolve()).encode()).hexdigest()[:16]
        self.index = EvidenceIndex(self.log_dir, state / f"index-{tag}.sqlite", self.keys, max_claims=cfg.dashboard.max_claims)
        self.jobs = Jobs(state / "runs" / tag)
        env = Environment(loader=PackageLoader("certus.sidecar.dashboard", "templates"), autoescape=select_autoescape(["html"]))
        env.filters.update(pct=_pct, num=_num, score=_score, when=_when, short=_short)
        self.templates = Jinja2Templates(env=env)
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._listener: Any = None
        self.port = 0
        self.asgi = Starlette(
            routes=[
                Route("/", self.overview),
                Route("/evidence", self.evidence),
                Route("/evidence/verify", self.run_verify, methods=["POST"]),
                Route("/decisions", self.decisions),
                Route("/decisions/{ident}", self.decision),
                Route("/calibration", self.calibration, methods=["GET", "POST"]),
                Route("/calibration/{job}", self.calibration_job),
                Route("/calibration/{job}/{name}", self.calibration_file),
                Route("/reports", self.reports, methods=["GET", "POST"]),
                Route("/reports/{job}", self.report_job),
                Route("/reports/{job}/{name}", self.report_file),
                Route("/login", self.login, methods=["GET", "POST"]),
                Route("/logout", self.logout, methods=["POST"]),
                Route("/api/status", self.api_status),
                Mount("/static", StaticFiles(packages=[("certus.sidecar.dashboard", "static")]), name="static"),
            ],
            middleware=[Middleware(_Headers)],
            exception_handlers={_NeedLogin: self._to_login, _Forbidden: self._forbidden},
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        self.index.start(self.cfg.dashboard.index_interval_s)

    def close(self) -> None:
        self.jobs.close()
        self.index.stop()

    # -- access -----------------------------------------------------------------------------------

    def _who(self, request: Request) -> Identity | None:
        if self.authenticator is None:
            return None
        try:
            if "authorization" in request.headers:
                return self.authenticator.from_header(request.headers.getlist("authorization"))
            token = request.cookies.get(COOKIE)
            if token:
                return self.authenticator.authenticate(token)
        except Unauthenticated:
            pass
        raise _NeedLogin()

    @staticmethod
    def _workspaces(who: Identity | None) -> frozenset[str] | None:
        """None = every workspace; else the ones this identity may read."""
        if who is None or (ALL_WORKSPACES in who.workspaces and who.can_read(ALL_WORKSPACES)):
            return None
        return frozenset(w for w in who.workspaces if who.can_read(w))

    def _admin(self, request: Request) -> Identity | None:
        who = self._who(request)
        if who is not None and not (ALL_WORKSPACES in who.workspaces and SCOPE_ADMIN in who.scopes):
            raise _Forbidden()
        return who

    @staticmethod
    def _same_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null" and origin.rstrip("/") != str(request.base_url).rstrip("/"):
            raise _Forbidden()

    async def _to_login(self, request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": "unauthorized"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    async def _forbidden(self, request: Request, exc: Exception) -> Response:
        return self._page(request, "message.html", {"title": "Not allowed", "message": "This page needs a token with workspace:admin on every workspace (*), and a form from this dashboard."}, status=403)

    def _page(self, request: Request, name: str, ctx: dict[str, Any], status: int = 200, who: Identity | None = None) -> Response:
        # the whole log's state (banner, footer) only for whoever may see the whole log
        whole = self.authenticator is None or (who is not None and self._workspaces(who) is None)
        base = {"request": request, "status": self.index.status() if whole else None, "version": __version__,
                "user": who.name if who else None, "auth": self.authenticator is not None}
        return self.templates.TemplateResponse(request, name, {**base, **ctx}, status_code=status)

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/")
        nxt = nxt if nxt.startswith("/") and not nxt.startswith("//") else "/"
        if request.method == "GET":
            return self._page(request, "login.html", {"next": nxt, "error": ""})
        form = await request.form()
        token = str(form.get("token", "")).strip()
        if self.authenticator is None:
            return RedirectResponse(nxt, status_code=303)
        try:
            self.authenticator.authenticate(token)
        except Unauthenticated as exc:
            return self._page(request, "login.html", {"next": nxt, "error": f"token refused: {exc}"}, status=401)
        resp = RedirectResponse(nxt, status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=self.tls, path="/")
        return resp

    async def logout(self, request: Request) -> Response:
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(COOKIE, path="/")
        return resp

    # -- overview ---------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        who = self._who(request)
        allowed = self._workspaces(who)
        q = request.query_params
        unit = q.get("unit", "day") if q.get("unit") in ("day", "week") else "day"
        rng = q.get("range", "all") if q.get("range") in RANGES else "all"
        workspace, manifest = q.get("workspace", ""), q.get("manifest", "")
        if allowed is not None and workspace and workspace not in allowed:
            workspace = "\x00"  # nothing: not this identity's workspace
        days = RANGES[rng]
        since = None if days is None else now_day() - days + 1
        key = ("overview", unit, since, workspace, manifest, allowed)
        ov, svgs, dims, as_of = self._cached(key, lambda: self._overview_view(unit, since, workspace, manifest, allowed))
        return self._page(
            request,
            "overview.html",
            {"ov": ov, "charts": svgs, "workspaces": dims[0], "manifests": dims[1], "unit": unit, "range": rng, "ranges": list(RANGES),
             "workspace": workspace if workspace != "\x00" else "", "manifest": manifest, "as_of": as_of},
            who=who,
        )

    def _overview_view(self, unit: str, since: int | None, workspace: str, manifest: str, allowed: frozenset[str] | None) -> Any:
        ov = self.index.overview(workspace=workspace, manifest=manifest, unit=unit, since_day=since, workspaces=allowed)
        svgs: dict[str, str] = {}
        if ov.buckets:
            svgs["outcomes"] = charts.outcomes_chart(ov)
            svgs["pass_rate"] = charts.pass_rate_chart(ov)
            if ov.violation_series:
                svgs["violations"] = charts.violations_chart(ov)
            for i, s in enumerate(ov.metrics):
                svgs[f"metric:{s.name}"] = charts.metric_chart(ov, i)
        return ov, svgs, self.index.dimensions(allowed), time.time()

    def _cached(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """``build()``'s value for ``key``, reused while the index has not changed or for
        CHART_TTL_S (drawing charts costs CPU the sidecar's scoring needs)."""
        version = self.index.version
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and (hit[0] == version or time.monotonic() - hit[1] < CHART_TTL_S):
                self._cache.move_to_end(key)
                return hit[2]
        value = build()
        with self._cache_lock:
            self._cache[key] = (version, time.monotonic(), value)
            while len(self._cache) > 32:
                self._cache.popitem(last=False)
        return value

    # -- evidence ---------------------------------------------------------------------------------

    def evidence(self, request: Request) -> Response:
        who = self._admin(request)
        runs = self.jobs.of("verify")
        job = runs[0] if runs else None
        sidecar: dict[str, Any] | None = None
        if self.app is not None:
            fwd = self.app.forwarder.stats()
            ev = self.app.evidence.stats()
            sidecar = {
                "key_id": self.app.evidence.key_id,
                "healthy": self.app.evidence.healthy,
                "failure": self.app.evidence.failure_reason or "",
                "sink": fwd["sink"],
                "backlog": fwd["backlog"],
                "breaker_state": fwd["breaker_state"],
                "delivered_seq": fwd["delivered_seq"],
                "dead_letters": fwd["dead_letters_total"],
                "last_error": fwd["last_error"] or "",
                "checkpoint_size": ev.get("checkpoint_size", 0),
                "tree_size": ev.get("tree_size", 0),
            }
        return self._page(request, "evidence.html", {"job": job, "sidecar": sidecar, "runs": runs[:10]}, who=who)

    async def run_verify(self, request: Request) -> Response:
        self._admin(request)
        self._same_origin(request)
        from certus.sidecar.evidence.verify import verify_log

        def run(job: Job) -> dict[str, Any]:
            report = verify_log(self.log_dir, self.keys)
            return {"report": report.to_dict(), "summary": report.summary()}

        self.jobs.submit("verify", "verify", run)
        return RedirectResponse("/evidence", status_code=303)

    # -- decisions --------------------------------------------------------------------------------

    def decisions(self, request: Request) -> Response:
        who = self._who(request)
        q = request.query_params.get("q", "").strip()
        if q:
            return RedirectResponse(f"/decisions/{quote(q, safe=':')}", status_code=303)
        outcome = request.query_params.get("outcome", "")
        outcome = outcome if outcome in ("pass", "warning", "fail", "skipped") else ""
        rows = self.index.recent(50, outcome=outcome, workspaces=self._workspaces(who))
        return self._page(request, "decisions.html", {"rows": rows, "outcome": outcome}, who=who)

    def decision(self, request: Request) -> Response:
        who = self._who(request)
        ident = request.path_params["ident"]
        row = self.index.find(ident)
        allowed = self._workspaces(who)
        if row is None or (allowed is not None and row["workspace"] not in allowed):
            return self._page(request, "message.html", {"title": "Not found", "message": f"No verified decision with evaluation_id or evidence_id {ident!r} in the index."}, status=404, who=who)
        where = f"{segment_name(row['segment'])} line {row['line_no']}"
        try:
            raw = read_line(self.log_dir, row["segment"], row["offset"], row["length"])
            rec = parse_line(raw, self.log_dir / segment_name(row["segment"]), row["offset"], row["line_no"])
            dec = IntegrityDecision.from_payload(rec.payload)
        except (OSError, RecordError, DecisionError) as exc:
            return self._page(request, "message.html", {"title": "Record changed", "message": f"The record of seq {row['seq']} ({where}) verified when it was indexed but cannot be read now: {exc}. Run verify on the Evidence page."}, status=409, who=who)
        ring = self.index.keyring()
        signer, error = ring.signer(rec.envelope, rec.seq) if ring is not None else ("", "no trusted key")
        try:  # the newest signed checkpoint, verified with the trusted keys
            newest = CheckpointStore(self.log_dir).newest(ring.keys if ring is not None else [])
            checkpoint = newest.checkpoint.size if newest is not None else None
        except CheckpointError:
            checkpoint = None
        ctx = {
            "row": row,
            "dec": dec,
            "evidence_id": rec.evidence_id,
            "signature": {
                "ok": not error and rec.evidence_id == row["evidence_id"],
                "error": error or ("" if rec.evidence_id == row["evidence_id"] else "the record's bytes changed since they were indexed"),
                "key_id": signer or dec.key_id,
                "sig": base64.b64encode(rec.envelope.signatures[0][1]).decode() if rec.envelope.signatures else "",
                "payload_type": rec.envelope.payload_type,
            },
            "chain": {"segment": segment_name(row["segment"]), "line": row["line_no"], "checkpoint_size": checkpoint,
                      "covered": checkpoint is not None and rec.seq < checkpoint},
            "claims": row["claims"],
            "inside": self.app is not None,
        }
        return self._page(request, "decision.html", ctx, who=who)

    # -- calibration ------------------------------------------------------------------------------

    def _calibration_files(self) -> list[str]:
        d = self.cfg.dashboard.calibration_dir
        if d is None or not Path(d).is_dir():
            return []
        return sorted(p.name for p in Path(d).iterdir() if p.suffix in (".jsonl", ".json") and p.is_file())

    async def calibration(self, request: Request) -> Response:
        who = self._admin(request)
        from certus.sidecar.scoring import CONFIDENCE, METRIC_NAMES
        from certus.sidecar.toolkit.roc import OBJECTIVES

        ctx: dict[str, Any] = {"files": self._calibration_files(), "metrics": METRIC_NAMES, "objectives": OBJECTIVES,
                               "default_metric": CONFIDENCE, "runs": self.jobs.of("calibration")[:10], "error": ""}
        if request.method == "GET":
            return self._page(request, "calibration.html", ctx, who=who)
        self._same_origin(request)
        if int(request.headers.get("content-length", "0") or 0) > MAX_UPLOAD_BYTES:
            ctx["error"] = f"file: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
            return self._page(request, "calibration.html", ctx, status=413, who=who)
        form = await request.form(max_files=1, max_fields=10)
        metric, objective = str(form.get("metric", CONFIDENCE)), str(form.get("objective", "youden"))
        workspace = str(form.get("workspace", "default")).strip() or "default"
        upload, chosen = form.get("file"), str(form.get("choice", ""))
        if metric not in METRIC_NAMES or objective not in OBJECTIVES:
            ctx["error"] = "metric / objective: not one of the choices"
            return self._page(request, "calibration.html", ctx, status=400, who=who)
        source: Path
        tmp: Path | None = None
        if upload is not None and hasattr(upload, "read") and getattr(upload, "filename", ""):
            data = await upload.read(MAX_UPLOAD_BYTES + 1)  # type: ignore[union-attr]  # (chunked bodies have no length)
            if len(data) > MAX_UPLOAD_BYTES:
                ctx["error"] = f"file: larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MiB"
                return self._page(request, "calibration.html", ctx, status=413, who=who)
            if not data:
                ctx["error"] = "file: the uploaded file is empty"
                return self._page(request, "calibration.html", ctx, status=400, who=who)
            title = Path(upload.filename).name or "upload.jsonl"  # type: ignore[union-attr]
            uploads = self.jobs.root.parent / "uploads"
            uploads.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=uploads))
            source = tmp / title
            source.write_bytes(data)
        elif chosen and chosen in self._calibration_files():
            source = Path(self.cfg.dashboard.calibration_dir) / chosen  # type: ignore[arg-type]
            title = chosen
        else:
            ctx["error"] = "file: upload a labelled JSONL file or choose one"
            return self._page(request, "calibration.html", ctx, status=400, who=who)

        def run(job: Job) -> dict[str, Any]:
            from certus.sidecar.toolkit.calibrate import calibrate_file, write_json
            from certus.sidecar.toolkit.presets import threshold_manifest

            assert job.workdir is not None
            try:
                cal = calibrate_file(source, cfg=self.cfg, metric=metric, objective=objective,
                                     roc_png=job.workdir / "roc.png", encoder=self._encoder())
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)  # labelled rows are content: not kept
            data = cal.to_json()
            data["source"] = title
            write_json(job.workdir / "calibration.json", data)
            manifest = threshold_manifest(workspace, cal.recommended_threshold, metric=metric, origin=f"dashboard calibration of {title}")
            write_json(job.workdir / "manifest.json", manifest)
            return {"calibration": data, "manifest": json.dumps(manifest, indent=2), "lines": cal.lines()}

        job = self.jobs.submit("calibration", f"{metric} on {title}", run)
        return RedirectResponse(f"/calibration/{job.id}", status_code=303)

    def _encoder(self) -> Any:
        if self.app is not None:
            return self.app.encoder  # the serving model: no second copy in memory
        return self.encoder_factory() if self.encoder_factory is not None else None

    def calibration_job(self, request: Request) -> Response:
        who = self._admin(request)
        job = self.jobs.get(request.path_params["job"], "calibration")
        if job is None:
            return self._page(request, "message.html", {"title": "Not found", "message": "No such calibration run (runs are kept while the dashboard runs)."}, status=404, who=who)
        return self._page(request, "calibration_job.html", {"job": job}, who=who)

    def calibration_file(self, request: Request) -> Response:
        return self._job_file(request, "calibration", {"roc.png": "image/png", "calibration.json": "application/json", "manifest.json": "application/json"})

    def _job_file(self, request: Request, kind: str, names: dict[str, str]) -> Response:
        self._admin(request)
        job = self.jobs.get(request.path_params["job"], kind)
        name = request.path_params["name"]
        if job is None or job.workdir is None or name not in names or not (job.workdir / name).is_file():
            return Response("not found", status_code=404, media_type="text/plain")
        disposition = "inline" if names[name].startswith(("image/", "text/html")) else "attachment"
        return FileResponse(job.workdir / name, media_type=names[name], content_disposition_type=disposition, filename=name)

    # -- reports ----------------------------------------------------------------------------------

    async def reports(self, request: Request) -> Response:
        who = self._admin(request)
        st = self.index.status()
        ctx: dict[str, Any] = {"runs": self.jobs.of("report")[:10], "error": "",
                               "first": (st["first_timestamp"] or "")[:10], "last": (st["last_timestamp"] or "")[:10]}
        if request.method == "GET":
            return self._page(request, "reports.html", ctx, who=who)
        self._same_origin(request)
        from certus.sidecar.toolkit.report import FORMATS, generate_report, parse_day

        form = await request.form(max_files=0, max_fields=10)
        formats = [f for f in FORMATS if form.get(f"format_{f}")]
        try:
            since = parse_day(str(form["since"]), "since") if form.get("since") else None
            until = parse_day(str(form["until"]), "until", end=True) if form.get("until") else None
            if not formats:
                raise ValueError("format: choose at least one of md, html, pdf")
            if since and until and until <= since:
                raise ValueError("until: must not be before since")
        except ValueError as exc:
            ctx["error"] = str(exc)
            return self._page(request, "reports.html", ctx, status=400, who=who)
        allow_unverified = bool(form.get("allow_unverified"))

        def run(job: Job) -> dict[str, Any]:
            assert job.workdir is not None
            out = generate_report(self.log_dir, job.workdir / "report", keys=self.keys, formats=formats,
                                  since=since, until=until, allow_unverified=allow_unverified)
            return {"files": {fmt: p.name for fmt, p in out.files.items()}, "verified": out.verified, "records": out.records,
                    "key_ids": list(out.key_ids)}

        period = f"{form.get('since') or 'start'} to {form.get('until') or 'end'}"
        job = self.jobs.submit("report", f"Annex IV report, {period}", run)
        return RedirectResponse(f"/reports/{job.id}", status_code=303)

    def report_job(self, request: Request) -> Response:
        who = self._admin(request)
        job = self.jobs.get(request.path_params["job"], "report")
        if job is None:
            return self._page(request, "message.html", {"title": "Not found", "message": "No such report run (runs are kept while the dashboard runs)."}, status=404, who=who)
        return self._page(request, "report_job.html", {"job": job}, who=who)

    def report_file(self, request: Request) -> Response:
        return self._job_file(request, "report", {"report.md": "text/markdown", "report.html": "text/html", "report.pdf": "application/pdf"})

    # -- API --------------------------------------------------------------------------------------

    def api_status(self, request: Request) -> Response:
        who = self._who(request)
        body = dict(self.index.status())
        if self._workspaces(who) is not None:  # a token scoped to some workspaces: nothing about the whole log
            body = {"version": body["version"], "broken": bool(body["broken"])}
        return JSONResponse(body)

    # -- serving ----------------------------------------------------------------------------------

    async def serve(self, address: str) -> int:
        """Start the index and listen on ``address`` (on the running loop); returns the port."""
        from certus.sidecar.server.http import UvicornListener

        self.start()
        self._listener = UvicornListener(self.asgi, "dashboard.address")
        tls = self.cfg.auth
        self.port = await self._listener.start(address, ssl_certfile=str(tls.tls_cert) if tls.tls_cert else None,
                                               ssl_keyfile=str(tls.tls_key) if tls.tls_key else None)
        return self.port

    async def aclose(self) -> None:
        """Stop listening (requests in flight finish), then the jobs and the index thread."""
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        await asyncio.get_running_loop().run_in_executor(None, self.close)


async def start_in_sidecar(cfg: Config, app: Any) -> Dashboard:
    """The dashboard inside a running sidecar: its auth, its encoder, its claim spans."""
    try:
        dash = Dashboard(cfg, app=app, authenticator=app.access.authenticator)
    except IndexInUse as exc:
        raise Fatal(f"dashboard.state_dir: {exc}") from exc
    app.pipeline.observers.append(dash.index.add_claims)
    try:
        await dash.serve(cfg.dashboard.address)
    except BaseException:
        app.pipeline.observers.remove(dash.index.add_claims)
        await dash.aclose()
        raise
    return dash


# -- template filters --------------------------------------------------------------------------------

def _pct(x: float | None, nd: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{nd}f}%"


def _num(x: int | float | None) -> str:
    return "–" if x is None else f"{x:,}"


def _score(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _when(ts: float | str | None) -> str:
    if ts is None or ts == "":
        return "–"
    if isinstance(ts, str):
        return ts.replace("T", " ")[:19] + " UTC"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _short(h: str, n: int = 16) -> str:
    return h if len(h) <= n + 8 else h[: n + 7] + "…"

