"""Directory-backed manifest store with hot reload.

Layout: ``<manifest_dir>/<workspace>/<version>.json | .toml | .json.dsse`` is the manifest
``certus://manifests/<workspace>/<version>``. When a version has a signed envelope
(``.json.dsse``) that is the manifest, and a plain file of the same version beside it (the source
it was signed from) is ignored. Hidden entries (``.*``, e.g. Kubernetes' ``..data``) and files with
other extensions are ignored.

Reads (:meth:`ManifestStore.resolve`) are lock-free lookups in an immutable snapshot that a reload
replaces wholesale; they never touch the disk. A polling watcher thread re-reads only files whose
stat signature changed. A broken edit keeps the last good version of that manifest and records the
error (structlog warning + :meth:`health_details`); it never raises into a request.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Mapping

import structlog

from certus.sidecar.config import ManifestConfig
from certus.sidecar.domain import Mode
from certus.sidecar.errors import FieldViolation, InvalidArgument, NotFound
from certus.sidecar.manifests.model import (
    LATEST,
    MANIFEST_URI_RE,
    TIMEOUT_MAX_MS,
    TIMEOUT_MIN_MS,
    VERSION_RE,
    WORKSPACE_RE,
    Manifest,
    manifest_uri,
)
from certus.sidecar.manifests.schema import (
    MAX_FILE_BYTES,
    ManifestDefaults,
    ManifestError,
    file_format,
    load_trusted_keys,
    parse_bytes,
    version_of_filename,
)
from certus.sidecar.signing import VerifyKey

log = structlog.get_logger(__name__)

DEFAULT_WORKSPACE = "default"
EMBEDDED_DEFAULT = "default_manifest.json"
_RACY_NS = 2_000_000_000
_URI_SHAPE = "^certus://manifests/[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$"


def defaults_from_config(cfg: ManifestConfig) -> ManifestDefaults:
    """DEFAULT_MODE / DEFAULT_EVALUATION_TIMEOUT_MS, checked; errors name the config field."""
    violations = []
    mode = Mode.SHADOW
    try:
        mode = Mode(cfg.default_mode)
    except ValueError:
        violations.append(
            FieldViolation("manifests.default_mode", f"must be one of {', '.join(m.value for m in Mode)}; got {cfg.default_mode!r}")
        )
    if not TIMEOUT_MIN_MS <= cfg.default_timeout_ms <= TIMEOUT_MAX_MS:
        violations.append(
            FieldViolation(
                "manifests.default_timeout_ms", f"must be between {TIMEOUT_MIN_MS} and {TIMEOUT_MAX_MS}, got {cfg.default_timeout_ms}"
            )
        )
    if violations:
        raise InvalidArgument(violations)
    return ManifestDefaults(default_mode=mode, timeout_ms=cfg.default_timeout_ms)


def load_embedded_default(defaults: ManifestDefaults = ManifestDefaults()) -> Manifest:
    """The manifest shipped in the package (``sidecar/default_manifest.json``)."""
    raw = resources.files("certus.sidecar").joinpath(EMBEDDED_DEFAULT).read_bytes()
    source = f"embedded:{EMBEDDED_DEFAULT}"
    m = parse_bytes(raw, "json", source=source, defaults=defaults)
    if m.workspace_id != DEFAULT_WORKSPACE:
        raise ManifestError(source, [FieldViolation("workspace_id", f"must be {DEFAULT_WORKSPACE!r}")])
    return m


@dataclass(frozen=True)
class _Stat:
    mtime_ns: int
    ctime_ns: int
    size: int
    ino: int


@dataclass
class _Parsed:
    stat: _Stat
    sha256: str  # of the bytes parsed
    manifest: Manifest | None
    error: str | None


@dataclass(frozen=True)
class _Snapshot:
    by_uri: Mapping[str, Manifest]  # every loaded version and every <ws>/latest
    latest: Mapping[str, Manifest]  # workspace -> newest version
    default: Manifest  # what an unknown workspace gets
    errors: Mapping[str, str]  # file (relative) -> error
    versions: Mapping[tuple[str, str], Manifest]  # (workspace, version) -> manifest


class ManifestStore:
    """Resolve ``(workspace_id, manifest_uri)`` to a validated :class:`Manifest`."""

    def __init__(self, cfg: ManifestConfig) -> None:
        self._cfg = cfg
        self._dir = Path(cfg.manifest_dir)
        self._defaults = defaults_from_config(cfg)
        self._trusted: dict[str, VerifyKey] = load_trusted_keys(cfg.trusted_keys)
        self._embedded = load_embedded_default(self._defaults)
        self._parsed: dict[Path, _Parsed] = {}
        self._loaded_count = 0
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snap = self._build({}, {})
        self.reload()

    # -- reads (per request; no I/O, no locks) ---------------------------------------------------

    def resolve(self, workspace_id: str, manifest_uri: str = "") -> Manifest:
        """The manifest that applies to a request.

        * ``""`` or ``certus://manifests/<ws>/latest``: the workspace's newest version, else the
          default (``<manifest_dir>/default/`` newest, else the embedded default);
        * ``certus://manifests/<ws>/<version>``: that version, else NotFound;
        * a uri naming another workspace than ``workspace_id``: InvalidArgument (manifest_uri).
        """
        snap = self._snap
        if not manifest_uri:
            return snap.latest.get(workspace_id) or snap.default
        m = snap.by_uri.get(manifest_uri)
        if m is not None and m.workspace_id == workspace_id:
            return m  # the common case: one dict lookup
        match = MANIFEST_URI_RE.fullmatch(manifest_uri)
        if match is None:
            raise InvalidArgument.field("manifest_uri", f"must match {_URI_SHAPE}")
        ws, version = match.group(1), match.group(2)
        if ws != workspace_id:
            raise InvalidArgument.field(
                "manifest_uri", f"names workspace {ws!r} but the request is for workspace_id {workspace_id!r}"
            )
        if version == LATEST:
            return snap.latest.get(ws) or snap.default
        m = snap.versions.get((ws, version))
        if m is None and ws == DEFAULT_WORKSPACE and version == self._embedded.version:
            m = self._embedded
        if m is None:
            raise NotFound(f"manifest {manifest_uri} not found")
        return m

    @property
    def default(self) -> Manifest:
        return self._snap.default

    @property
    def embedded_default(self) -> Manifest:
        return self._embedded

    def health_details(self) -> dict[str, str]:
        """Manifest files that failed to load (relative path -> error). Empty when all is well."""
        return dict(self._snap.errors)

    def uris(self) -> list[str]:
        """Every loaded manifest version, sorted."""
        return sorted(m.manifest_uri for m in self._snap.versions.values())

    # -- reload ----------------------------------------------------------------------------------

    def reload(self) -> None:
        """Rescan the directory now; re-read changed files. Never raises (errors are recorded)."""
        with self._reload_lock:
            try:
                self._reload_locked()
            except Exception as exc:  # a bug or an unreadable directory must not take the sidecar down
                log.error("manifest_reload_failed", error_type=type(exc).__name__, error=str(exc))

    def _reload_locked(self) -> None:
        self._loaded_count = 0
        found, dir_errors = self._scan()
        previous = self._snap.versions
        versions: dict[tuple[str, str], Manifest] = {}
        scan_errors = dict(dir_errors)
        errors: dict[str, str] = dict(dir_errors)
        seen: set[Path] = set()
        for key, files in sorted(found.items()):
            files.sort(key=lambda f: f[0])
            chosen = self._choose(files)
            if isinstance(chosen, str):  # ambiguous
                rel = _rel(files[0][0], self._dir)
                errors[rel] = scan_errors[rel] = _err(rel, chosen)
                if key in previous:
                    versions[key] = previous[key]
                continue
            path, st = chosen
            seen.add(path)
            parsed = self._parsed.get(path)
            if parsed is None or parsed.stat != st or _racy(st):
                parsed = self._parse(path, st, key, parsed)
                self._parsed[path] = parsed
            if parsed.manifest is not None:
                versions[key] = parsed.manifest
            else:
                errors[_rel(path, self._dir)] = parsed.error or "invalid"
                if key in previous:  # a broken edit keeps the last good version
                    versions[key] = previous[key]
        for path in list(self._parsed):
            if path not in seen:
                del self._parsed[path]
        for key in previous.keys() - versions.keys():
            log.info("manifest_removed", manifest_uri=manifest_uri(*key))
        for rel, message in scan_errors.items():  # parse errors were logged when parsed
            if self._snap.errors.get(rel) != message:
                log.warning("manifest_invalid", file=rel, error=message)
        self._snap = self._build(versions, errors)
        if self._loaded_count:
            log.info("manifests_loaded", loaded=self._loaded_count, versions=len(versions), errors=len(errors))

    def _parse(self, path: Path, st: _Stat, key: tuple[str, str], before: _Parsed | None) -> _Parsed:
        rel = _rel(path, self._dir)
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            message = _err(rel, f"cannot read: {exc.strerror or exc}")
            log.warning("manifest_invalid", file=rel, error=message)
            return _Parsed(st, "", None, message)
        sha = hashlib.sha256(raw).hexdigest()
        if before is not None and before.sha256 == sha:
            return _Parsed(st, sha, before.manifest, before.error)  # touched, not changed
        try:
            m = parse_bytes(
                raw,
                file_format(path),
                source=rel,
                defaults=self._defaults,
                trusted_keys=self._trusted,
                require_signature=bool(self._trusted),
                expected_location=key,
            )
        except ManifestError as exc:
            log.warning("manifest_invalid", file=rel, error=exc.message)
            return _Parsed(st, sha, None, exc.message)
        log.debug("manifest_loaded", file=rel, manifest_uri=m.manifest_uri, digest=m.digest, signer=m.signer_key_id)
        self._loaded_count += 1
        return _Parsed(st, sha, m, None)

    def _choose(self, files: list[tuple[Path, _Stat]]) -> tuple[Path, _Stat] | str:
        signed = [f for f in files if file_format(f[0]) == "dsse"]
        if signed:
            return signed[0]
        if len(files) > 1:
            names = ", ".join(sorted(p.name for p, _ in files))
            return f"ambiguous: {names} define the same version; keep one"
        return files[0]

    def _scan(self) -> tuple[dict[tuple[str, str], list[tuple[Path, _Stat]]], dict[str, str]]:
        found: dict[tuple[str, str], list[tuple[Path, _Stat]]] = {}
        errors: dict[str, str] = {}
        try:
            top = list(os.scandir(self._dir))
        except FileNotFoundError:
            return found, errors  # no directory: only the default manifest
        except OSError as exc:
            errors[str(self._dir)] = _err(str(self._dir), f"cannot list manifest directory: {exc.strerror or exc}")
            return found, errors
        for entry in top:
            if entry.name.startswith("."):
                continue
            if not entry.is_dir():
                if file_format(entry.name):
                    errors[entry.name] = _err(entry.name, "manifests live in <workspace>/<version>.json|.toml|.json.dsse")
                continue
            ws = entry.name
            try:
                inner = list(os.scandir(entry.path))
            except OSError as exc:
                errors[ws] = _err(ws, f"cannot list: {exc.strerror or exc}")
                continue
            for f in inner:
                if f.name.startswith(".") or not file_format(f.name):
                    continue
                rel = f"{ws}/{f.name}"
                if not WORKSPACE_RE.fullmatch(ws):
                    errors[rel] = _err(rel, "directory name is not a valid workspace_id (^[a-zA-Z0-9_-]{1,255}$)")
                    continue
                version = version_of_filename(f.name)
                m = VERSION_RE.fullmatch(version)
                if m is None or not 1 <= int(m.group(2)) <= 12:
                    errors[rel] = _err(rel, "file name must be <YYYY-MM>.json, .toml or .json.dsse")
                    continue
                try:
                    s = f.stat()  # follows symlinks (ConfigMap mounts)
                except OSError as exc:
                    errors[rel] = _err(rel, f"cannot stat: {exc.strerror or exc}")
                    continue
                st = _Stat(s.st_mtime_ns, s.st_ctime_ns, s.st_size, s.st_ino)
                found.setdefault((ws, version), []).append((Path(f.path), st))
        return found, errors

    def _build(self, versions: dict[tuple[str, str], Manifest], errors: dict[str, str]) -> _Snapshot:
        latest: dict[str, Manifest] = {}
        for (ws, version), m in versions.items():
            cur = latest.get(ws)
            if cur is None or version > cur.version:  # YYYY-MM sorts as text
                latest[ws] = m
        by_uri: dict[str, Manifest] = {m.manifest_uri: m for m in versions.values()}
        for ws, m in latest.items():
            by_uri[manifest_uri(ws, LATEST)] = m
        default = latest.get(DEFAULT_WORKSPACE, self._embedded)
        by_uri.setdefault(self._embedded.manifest_uri, self._embedded)
        by_uri.setdefault(manifest_uri(DEFAULT_WORKSPACE, LATEST), default)
        return _Snapshot(by_uri=by_uri, latest=latest, default=default, errors=errors, versions=versions)

    # -- watcher ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the polling watcher (no-op when reload_interval_s <= 0 or already running)."""
        if self._cfg.reload_interval_s <= 0 or (self._thread is not None and self._thread.is_alive()):
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="manifest-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout_s)

    def _watch(self) -> None:
        while not self._stop.wait(self._cfg.reload_interval_s):
            self.reload()

    def __enter__(self) -> "ManifestStore":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _racy(st: _Stat) -> bool:
    """A file modified within the last 2 s may change again without its stat changing (coarse
    file-system timestamps); such files are re-read and compared by content (as git does)."""
    return time.time_ns() - st.mtime_ns < _RACY_NS


def _err(rel: str, description: str) -> str:
    return f"{rel}: <file>: {description}"


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
