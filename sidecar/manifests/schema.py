"""Parse and validate manifest documents (JSON, TOML or a DSSE envelope holding JSON).

Validation follows the seed's EvaluationManifest schema and collects EVERY violation before
raising :class:`ManifestError` (an :class:`~sidecar.errors.InvalidArgument`), whose message names
the file and the field path of each, e.g.
``acme/2025-01.json: thresholds.faithfulness.max_score: must be >= min_score``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from certus.sidecar.domain import PII_ENTITY_TYPES, GuardrailConfig, GuardrailType, Mode, Severity
from certus.sidecar.errors import FieldViolation, InvalidArgument
from certus.sidecar.manifests.model import (
    DEFAULT_MIN_OVERALL_SCORE,
    DEFAULT_TIMEOUT_MS,
    MANIFEST_ID_RE,
    MANIFEST_MODES,
    MANIFEST_URI_RE,
    METRIC_NAMES,
    TIMEOUT_MAX_MS,
    TIMEOUT_MIN_MS,
    VERSION_RE,
    WORKSPACE_RE,
    Manifest,
    ThresholdConfig,
    seed_guardrail_defaults,
)
from certus.sidecar.signing import (
    MANIFEST_PAYLOAD_TYPE,
    Envelope,
    SignatureError,
    VerifyKey,
    canonical_json,
    verify_envelope,
)

MAX_FILE_BYTES = 1024 * 1024  # a manifest is a few hundred bytes; refuse anything absurd
SIGNED_SUFFIX = ".json.dsse"
PLAIN_SUFFIXES = (".json", ".toml")


class ManifestError(InvalidArgument):
    """A manifest that does not validate. ``source`` is the file; each violation names a field path."""

    def __init__(self, source: str, violations: list[FieldViolation]) -> None:
        self.source = source
        super().__init__(violations, "; ".join(f"{source}: {v.field}: {v.description}" for v in violations))


@dataclass(frozen=True, slots=True)
class ManifestDefaults:
    """Values for fields a manifest omits that the service configures (DEFAULT_MODE,
    DEFAULT_EVALUATION_TIMEOUT_MS); the seed's own defaults otherwise."""

    default_mode: Mode = Mode.SHADOW
    timeout_ms: int = DEFAULT_TIMEOUT_MS


def file_format(path: str | Path) -> str:
    """``json``, ``toml`` or ``dsse`` from the file name; ``""`` for anything else."""
    name = Path(path).name
    if name.endswith(SIGNED_SUFFIX):
        return "dsse"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".toml"):
        return "toml"
    return ""


def version_of_filename(path: str | Path) -> str:
    """``2025-01`` for ``2025-01.json``, ``2025-01.toml`` or ``2025-01.json.dsse``."""
    name = Path(path).name
    for suffix in (SIGNED_SUFFIX, *PLAIN_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------
# Decoding


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers keys it saw twice (json keeps the last one silently)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object()
    dups = []
    for k, v in pairs:
        if k in obj:
            dups.append(k)
        obj[k] = v
    obj.duplicates = tuple(dups)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid number")


def decode_document(raw: bytes, fmt: str, source: str) -> dict[str, Any]:
    """Bytes -> the document as a dict; syntax errors become a ManifestError naming the file."""
    if len(raw) > MAX_FILE_BYTES:
        raise ManifestError(source, [FieldViolation("<file>", f"is {len(raw)} bytes; the limit is {MAX_FILE_BYTES}")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(source, [FieldViolation("<file>", f"not UTF-8 ({exc.reason} at byte {exc.start})")]) from exc
    try:
        if fmt == "json":
            doc = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
        elif fmt == "toml":
            doc = tomllib.loads(text)
        else:
            raise ManifestError(source, [FieldViolation("<file>", f"unknown format {fmt!r}; use .json, .toml or .json.dsse")])
    except json.JSONDecodeError as exc:
        raise ManifestError(
            source, [FieldViolation("<file>", f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")]
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(source, [FieldViolation("<file>", f"invalid TOML: {exc}")]) from exc
    except ValueError as exc:  # NaN / Infinity constants
        raise ManifestError(source, [FieldViolation("<file>", f"invalid JSON: {exc}")]) from exc
    if not isinstance(doc, dict):
        raise ManifestError(source, [FieldViolation("<file>", f"must be an object, got {_type_name(doc)}")])
    return doc


def open_envelope(
    raw: bytes, source: str, trusted_keys: Mapping[str, VerifyKey] | None
) -> tuple[dict[str, Any], str | None]:
    """A DSSE envelope -> (document, signer key id). With ``trusted_keys`` the signature must
    verify against one of them; without, the payload is read and the signature is NOT checked."""
    if len(raw) > MAX_FILE_BYTES:
        raise ManifestError(source, [FieldViolation("<file>", f"is {len(raw)} bytes; the limit is {MAX_FILE_BYTES}")])
    try:
        env = Envelope.from_json(raw)
    except SignatureError as exc:
        raise ManifestError(source, [FieldViolation("envelope", str(exc))]) from exc
    if env.payload_type != MANIFEST_PAYLOAD_TYPE:
        raise ManifestError(
            source, [FieldViolation("envelope.payloadType", f"is {env.payload_type!r}; expected {MANIFEST_PAYLOAD_TYPE!r}")]
        )
    signer: str | None = None
    if trusted_keys:
        try:
            verify_envelope(env, trusted_keys, MANIFEST_PAYLOAD_TYPE)
        except SignatureError as exc:
            raise ManifestError(source, [FieldViolation("envelope.signatures", str(exc))]) from exc
        signer = next(k for k, _ in env.signatures if k in trusted_keys)
    return decode_document(env.payload, "json", source), signer


def load_trusted_keys(paths: tuple[Path, ...] | list[Path]) -> dict[str, VerifyKey]:
    """Public key files (base64 of the raw 32 bytes) -> {key id: key}. Errors name the file."""
    keys: dict[str, VerifyKey] = {}
    violations = []
    for i, p in enumerate(paths):
        try:
            key = VerifyKey.from_file(p)
        except (OSError, ValueError) as exc:
            violations.append(FieldViolation(f"manifests.trusted_keys[{i}]", f"{p}: not a usable Ed25519 public key ({exc})"))
            continue
        keys[key.key_id] = key
    if violations:
        raise InvalidArgument(violations)
    return keys


def document_json(doc: Mapping[str, Any]) -> bytes:
    """Canonical JSON of a document (TOML datetimes as ISO 8601): what gets signed and hashed."""
    return canonical_json(_jsonable(doc))


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    return v


# ---------------------------------------------------------------------------------------------
# Validation

_TOP_FIELDS = frozenset(
    {
        "manifest_id",
        "manifest_uri",
        "workspace_id",
        "version",
        "created_at",
        "signed_by",
        "default_mode",
        "thresholds",
        "guardrails",
        "require_all_metrics_pass",
        "min_overall_score",
        "timeout_ms",
        "log_full_content",
        "mlflow_experiment_name",
    }
)
_REQUIRED = ("manifest_id", "manifest_uri", "workspace_id", "version", "signed_by")
_THRESHOLD_FIELDS = frozenset({"min_score", "max_score", "weight", "required"})
_GUARDRAIL_FIELDS = frozenset(f.name for f in dataclasses.fields(GuardrailConfig))


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


class _Checker:
    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []

    def add(self, path: str, description: str) -> None:
        self.violations.append(FieldViolation(path, description))

    def obj(self, path: str, v: Any, allowed: frozenset[str] | None) -> dict[str, Any] | None:
        if not isinstance(v, dict):
            self.add(path, f"must be an object, got {_type_name(v)}")
            return None
        for k in getattr(v, "duplicates", ()):
            self.add(_join(path, k), "duplicate key")
        if allowed is not None:
            for k in v:
                if k not in allowed:
                    self.add(_join(path, k), "unknown field")
        return v

    def string(self, path: str, v: Any) -> str | None:
        if not isinstance(v, str):
            self.add(path, f"must be a string, got {_type_name(v)}")
            return None
        return v

    def boolean(self, path: str, v: Any) -> bool | None:
        if not isinstance(v, bool):
            self.add(path, f"must be true or false, got {_type_name(v)}")
            return None
        return v

    def number(self, path: str, v: Any, lo: float | None = None, hi: float | None = None) -> float | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.add(path, f"must be a number, got {_type_name(v)}")
            return None
        x = float(v)
        if not math.isfinite(x):
            self.add(path, "must be a finite number")
            return None
        if lo is not None and hi is not None and not lo <= x <= hi:
            self.add(path, f"must be between {lo:g} and {hi:g}, got {x:g}")
            return None
        if lo is not None and x < lo:
            self.add(path, f"must be >= {lo:g}, got {x:g}")
            return None
        return x

    def integer(self, path: str, v: Any, lo: int, hi: int) -> int | None:
        if isinstance(v, bool) or not isinstance(v, int):
            self.add(path, f"must be an integer, got {_type_name(v)}")
            return None
        if not lo <= v <= hi:
            self.add(path, f"must be between {lo} and {hi}, got {v}")
            return None
        return v

    def pattern(self, path: str, v: Any, regex: Any, shown: str) -> str | None:
        s = self.string(path, v)
        if s is None:
            return None
        if not regex.fullmatch(s):
            self.add(path, f"must match {shown}")
            return None
        return s

    def choice(self, path: str, v: Any, choices: tuple[str, ...]) -> str | None:
        s = self.string(path, v)
        if s is None:
            return None
        if s not in choices:
            self.add(path, f"must be one of {', '.join(choices)}; got {s!r}")
            return None
        return s


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


def build_manifest(
    doc: Mapping[str, Any],
    *,
    source: str,
    defaults: ManifestDefaults = ManifestDefaults(),
    expected_location: tuple[str, str] | None = None,
    signer_key_id: str | None = None,
) -> Manifest:
    """Validate a decoded document; raise ManifestError listing every violation.

    ``expected_location`` = (workspace, version) the file's place in the store implies; the
    document must declare the same workspace_id, version and manifest_uri.
    """
    c = _Checker()
    root = c.obj("", doc, _TOP_FIELDS)
    if root is None:
        raise ManifestError(source, c.violations)
    for name in _REQUIRED:
        if name not in root:
            c.add(name, "required")

    manifest_id = c.pattern("manifest_id", root["manifest_id"], MANIFEST_ID_RE, "^manifest_[a-zA-Z0-9_-]+$") if "manifest_id" in root else None
    workspace_id = c.pattern("workspace_id", root["workspace_id"], WORKSPACE_RE, "^[a-zA-Z0-9_-]{1,255}$") if "workspace_id" in root else None
    version = None
    if "version" in root:
        version = c.pattern("version", root["version"], VERSION_RE, "^[0-9]{4}-[0-9]{2}$ (YYYY-MM)")
        if version is not None and not 1 <= int(version[5:]) <= 12:
            c.add("version", f"month must be 01-12, got {version[5:]}")
            version = None
    uri = None
    if "manifest_uri" in root:
        uri = c.pattern(
            "manifest_uri", root["manifest_uri"], MANIFEST_URI_RE, "^certus://manifests/[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$"
        )
        if uri is not None and workspace_id is not None and version is not None:
            want = f"certus://manifests/{workspace_id}/{version}"
            if uri != want:
                c.add("manifest_uri", f"must be {want} (certus://manifests/<workspace_id>/<version>)")
    if expected_location is not None:
        ws, ver = expected_location
        if workspace_id is not None and workspace_id != ws:
            c.add("workspace_id", f"is {workspace_id!r} but the file lies in the directory of workspace {ws!r}")
        if version is not None and version != ver:
            c.add("version", f"is {version!r} but the file is named for version {ver!r}")

    signed_by = None
    if "signed_by" in root:
        signed_by = c.string("signed_by", root["signed_by"])
        if signed_by is not None and not signed_by.strip():
            c.add("signed_by", "must not be empty")

    created_at = None
    if root.get("created_at") is not None:
        created_at = _datetime(c, "created_at", root["created_at"])

    default_mode = defaults.default_mode
    if "default_mode" in root:
        m = c.choice("default_mode", root["default_mode"], tuple(x.value for x in MANIFEST_MODES))
        if m is not None:
            default_mode = Mode(m)

    thresholds: dict[str, ThresholdConfig] = {}
    if "thresholds" in root:
        tobj = c.obj("thresholds", root["thresholds"], None)
        for name, spec in (tobj or {}).items():
            path = f"thresholds.{name}"
            if name not in METRIC_NAMES:
                c.add(path, f"unknown metric {name!r}; known metrics: {', '.join(sorted(METRIC_NAMES))}")
                continue
            t = _threshold(c, path, spec)
            if t is not None:
                thresholds[name] = t

    guardrails = seed_guardrail_defaults()
    if "guardrails" in root:
        gobj = c.obj("guardrails", root["guardrails"], None)
        for kind, spec in (gobj or {}).items():
            path = f"guardrails.{kind}"
            try:
                gt = GuardrailType(kind)
            except ValueError:
                c.add(path, f"unknown guardrail type; known: {', '.join(x.value for x in GuardrailType)}")
                continue
            g = _guardrail(c, path, spec, guardrails[gt])
            if g is not None:
                guardrails[gt] = g

    flags: dict[str, bool] = {}
    for name in ("require_all_metrics_pass", "log_full_content"):
        if name in root:
            b = c.boolean(name, root[name])
            if b is not None:
                flags[name] = b

    min_overall: float | None = DEFAULT_MIN_OVERALL_SCORE
    if "min_overall_score" in root:
        min_overall = None if root["min_overall_score"] is None else c.number("min_overall_score", root["min_overall_score"], 0.0, 1.0)

    timeout_ms = defaults.timeout_ms
    if "timeout_ms" in root:
        t_ms = c.integer("timeout_ms", root["timeout_ms"], TIMEOUT_MIN_MS, TIMEOUT_MAX_MS)
        if t_ms is not None:
            timeout_ms = t_ms

    mlflow = None
    if root.get("mlflow_experiment_name") is not None:
        mlflow = c.string("mlflow_experiment_name", root["mlflow_experiment_name"])

    if c.violations:
        raise ManifestError(source, c.violations)
    assert manifest_id and uri and workspace_id and version and signed_by is not None
    return Manifest(
        manifest_id=manifest_id,
        manifest_uri=uri,
        workspace_id=workspace_id,
        version=version,
        signed_by=signed_by,
        created_at=created_at,
        default_mode=default_mode,
        thresholds=thresholds,
        guardrails=guardrails,
        require_all_metrics_pass=flags.get("require_all_metrics_pass", False),
        min_overall_score=min_overall,
        timeout_ms=timeout_ms,
        log_full_content=flags.get("log_full_content", False),
        mlflow_experiment_name=mlflow,
        source=source,
        digest="sha256:" + hashlib.sha256(document_json(root)).hexdigest(),
        signer_key_id=signer_key_id,
    )


def _datetime(c: _Checker, path: str, v: Any) -> dt.datetime | None:
    if isinstance(v, dt.datetime):
        value = v
    elif isinstance(v, str):
        try:
            value = dt.datetime.fromisoformat(v)
        except ValueError:
            c.add(path, "must be an ISO 8601 date-time, e.g. 2025-01-15T09:30:00Z")
            return None
    else:
        c.add(path, f"must be an ISO 8601 date-time string, got {_type_name(v)}")
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # naive times are UTC
    return value


def _threshold(c: _Checker, path: str, spec: Any) -> ThresholdConfig | None:
    obj = c.obj(path, spec, _THRESHOLD_FIELDS)
    if obj is None:
        return None
    before = len(c.violations)
    lo = c.number(f"{path}.min_score", obj["min_score"], 0.0, 1.0) if obj.get("min_score") is not None else None
    hi = c.number(f"{path}.max_score", obj["max_score"], 0.0, 1.0) if obj.get("max_score") is not None else None
    weight = c.number(f"{path}.weight", obj["weight"], 0.0) if "weight" in obj else 1.0
    required = c.boolean(f"{path}.required", obj["required"]) if "required" in obj else True
    if obj.get("min_score") is None and obj.get("max_score") is None:
        c.add(path, "at least one of min_score or max_score must be set")
    if lo is not None and hi is not None and hi < lo:
        c.add(f"{path}.max_score", f"must be >= min_score ({hi:g} < {lo:g})")
    if len(c.violations) != before:
        return None
    assert weight is not None and required is not None
    return ThresholdConfig(min_score=lo, max_score=hi, weight=weight, required=required)


def _guardrail(c: _Checker, path: str, spec: Any, base: GuardrailConfig) -> GuardrailConfig | None:
    """Fields a manifest gives override the seed's default for that guardrail type."""
    obj = c.obj(path, spec, _GUARDRAIL_FIELDS)
    if obj is None:
        return None
    before = len(c.violations)
    changes: dict[str, Any] = {}
    parsers: dict[str, Callable[[str, Any], Any]] = {
        "enabled": c.boolean,
        "block_on_violation": c.boolean,
        "scan_query": c.boolean,
        "allow_from_context": c.boolean,
        "confidence_threshold": lambda p, v: c.number(p, v, 0.0, 1.0),
        "severity_threshold": lambda p, v: c.choice(p, v, tuple(s.value for s in Severity)),
        "entities": lambda p, v: _entities(c, p, v),
    }
    if "entities" in obj and not path.endswith(GuardrailType.PII.value):
        c.add(f"{path}.entities", "only the pii guardrail takes entities")
    for name, raw in obj.items():
        if name in parsers:
            changes[name] = parsers[name](f"{path}.{name}", raw)
    if len(c.violations) != before:
        return None
    if "severity_threshold" in changes:
        changes["severity_threshold"] = Severity(changes["severity_threshold"])
    return dataclasses.replace(base, **changes)


def _entities(c: _Checker, path: str, v: Any) -> tuple[str, ...] | None:
    """A non-empty list of distinct PII entity types."""
    if not isinstance(v, list) or not v:
        c.add(path, f"must be a non-empty list of entity types ({', '.join(PII_ENTITY_TYPES)})")
        return None
    out = [c.choice(f"{path}[{i}]", x, PII_ENTITY_TYPES) for i, x in enumerate(v)]
    if None in out:
        return None
    if len(set(out)) != len(out):
        c.add(path, "lists an entity type twice")
        return None
    return tuple(x for x in out if x is not None)


# ---------------------------------------------------------------------------------------------
# Files


def parse_bytes(
    raw: bytes,
    fmt: str,
    *,
    source: str,
    defaults: ManifestDefaults = ManifestDefaults(),
    trusted_keys: Mapping[str, VerifyKey] | None = None,
    require_signature: bool = False,
    expected_location: tuple[str, str] | None = None,
) -> Manifest:
    """Decode, (verify,) and validate one manifest document."""
    signer = None
    if fmt == "dsse":
        doc, signer = open_envelope(raw, source, trusted_keys)
    else:
        if require_signature:
            raise ManifestError(
                source,
                [FieldViolation("<file>", "unsigned manifest refused: trusted manifest keys are configured "
                                "(sign it: certus-sidecar manifest sign)")],
            )
        doc = decode_document(raw, fmt, source)
    return build_manifest(doc, source=source, defaults=defaults, expected_location=expected_location, signer_key_id=signer)


def load_file(
    path: str | Path,
    *,
    source: str | None = None,
    defaults: ManifestDefaults = ManifestDefaults(),
    trusted_keys: Mapping[str, VerifyKey] | None = None,
    expected_location: tuple[str, str] | None = None,
) -> Manifest:
    """Read and validate one manifest file (format from its name)."""
    path = Path(path)
    source = source or str(path)
    fmt = file_format(path)
    if not fmt:
        raise ManifestError(source, [FieldViolation("<file>", "unknown format; use .json, .toml or .json.dsse")])
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ManifestError(source, [FieldViolation("<file>", f"cannot read: {exc.strerror or exc}")]) from exc
    return parse_bytes(
        raw,
        fmt,
        source=source,
        defaults=defaults,
        trusted_keys=trusted_keys,
        require_signature=bool(trusted_keys),
        expected_location=expected_location,
    )
