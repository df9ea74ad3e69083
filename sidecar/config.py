"""Configuration: one frozen, typed tree, loaded in ONE place (:func:`load`).

Sources, later wins: defaults below < optional TOML file (``CERTUS_CONFIG`` or ``--config``)
< environment variables < explicit overrides (CLI flags). No other module reads ``os.environ``.

Every field documents its default and trade-off. Env var names are given beside each field;
where the seed spec named a variable (LOG_LEVEL, CIRCUIT_BREAKER_FAILURE_THRESHOLD, ...) that name
is used.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_HOME = Path(os.environ.get("CERTUS_HOME", str(Path.home() / ".certus")))


@dataclass(frozen=True)
class ServerConfig:
    address: str = "127.0.0.1:50051"  # CERTUS_ADDRESS; loopback by default (no auth needed there)
    grace_s: float = 10.0  # CERTUS_GRACE_S: SIGTERM drain period for in-flight calls
    max_message_bytes: int = 4 * 1024 * 1024  # CERTUS_MAX_MESSAGE_BYTES: 50 chunks x 10k chars fit
    max_concurrent_rpcs: int = 2048  # CERTUS_MAX_CONCURRENT_RPCS: beyond this, RESOURCE_EXHAUSTED
    # CERTUS_MAX_CONCURRENT_STREAMS: HTTP/2 streams per client connection (clients queue beyond it);
    # 0 = gRPC's default (unlimited). Bounds flood memory per connection to about this many
    # messages: 64 took a 256-way flood of 4 MB requests from +1.4 GiB to +0.3 GiB (docs/security.md)
    max_concurrent_streams: int = 0
    allow_insecure_remote: bool = False  # CERTUS_ALLOW_INSECURE_REMOTE: bind non-loopback without auth
    metrics_address: str = ""  # CERTUS_METRICS_ADDRESS: e.g. 127.0.0.1:9464 for Prometheus text; "" off
    # CERTUS_REST_ADDRESS: the spec's REST API (POST /v1/evaluate, ...) on this address, e.g.
    # 127.0.0.1:8080; "" = off. Same auth, limits, pipeline and evidence as gRPC (sidecar/server/rest.py)
    rest_address: str = ""
    # CERTUS_HEALTH_ADDRESS: an extra listener serving only grpc.health.v1 (e.g. 0.0.0.0:50052 in a
    # pod, for kubelet's native gRPC probes, which cannot reach the sidecar's loopback); "" = off
    health_address: str = ""
    use_uvloop: bool = True  # CERTUS_UVLOOP
    # CERTUS_MEMORY_RECLAIM_S: every this many seconds, if RSS grew by memory_reclaim_growth_mib
    # since the last reclaim and stopped rising, run gc + malloc_trim (sidecar/memory.py); 0 = off
    memory_reclaim_interval_s: float = 2.0
    memory_reclaim_growth_mib: float = 64.0  # CERTUS_MEMORY_RECLAIM_GROWTH_MIB
    # CERTUS_ADMISSION_TARGET_MS: admit synchronous evaluations while (measured service rate x this)
    # exceeds the number in flight; beyond it answer at once with a signed overloaded skip
    # (sidecar/admission.py). 0 = off: calls queue up to their timeout. The defaults let a burst of
    # 8 through untouched and bound sustained overload near 250 ms; for a hard latency budget set
    # e.g. 100 and 2 (docs: bench_overload.py measures both).
    admission_target_ms: float = 250.0
    admission_min_in_flight: int = 8  # CERTUS_ADMISSION_MIN_IN_FLIGHT: never refuse below this many
    # CERTUS_FRONTENDS: gRPC front-end processes on server.address (SO_REUSEPORT). 1 = one process
    # does everything. N > 1: this process (the hub) keeps the encoder's batcher, the evidence log,
    # the forwarder, async jobs, REST, dashboard and metrics, and serves gRPC too; N - 1 more
    # processes serve gRPC and run guardrails, scoring and policy, sending texts to encode and
    # decisions to sign to the hub over a local socket, so batches fill across every caller and
    # there is one hash chain (sidecar/server/frontends.py)
    frontends: int = 1
    # CERTUS_STAGE_THREADS: threads of the one pool that runs each request's guardrail scan and
    # scoring (per process). They hold the GIL for most of their work, so more threads add
    # contention, not speed (tests/benchmarks/bench_floor.py measures 1, 2, 4); 2 lets one thread
    # keep scoring while the other waits on the encoder or the PII worker process
    stage_threads: int = 2


@dataclass(frozen=True)
class ModelConfig:
    # CERTUS_MODEL_DIR: where the exported ONNX model and tokenizer live (cached export)
    model_dir: Path = DEFAULT_HOME / "models" / "all-MiniLM-L6-v2"
    # CERTUS_MODEL_VARIANT: auto (int8 on CPU, fp16 on CUDA) | fp32 | int8 | fp16. int8 (dynamic
    # quantisation, per-channel) runs 2.2x fp32 on these CPUs with equal validation AUC and guardrail F1.
    variant: str = "auto"
    provider: str = "auto"  # CERTUS_PROVIDER: auto (CUDA if usable, else CPU) | cpu | cuda
    intra_op_threads: int = 0  # CERTUS_INTRA_OP_THREADS: 0 = one per core
    max_seq_len: int = 256  # CERTUS_MAX_SEQ_LEN: MiniLM was trained on 256 word pieces
    # CERTUS_ARENA_SHRINK_TOKENS: a model batch of more padded tokens than this hands ONNX Runtime's
    # memory arena back at the end of its run. The arena keeps the peak of the largest batch ever
    # seen (one 64 x 256 batch: +550 MiB, held for good); typical batches stay below it and keep
    # the arena's speed. 0 = never shrink.
    arena_shrink_tokens: int = 4096
    # CERTUS_EXPORT_PYTHON: the Python of the export toolchain (torch, transformers, onnx: installed
    # apart from serving by `make export-env`), run as its own process when a model variant is
    # missing; "" = .venv-export/bin/python beside the running environment (certus.models.artifacts)
    export_python: str = ""


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 64  # CERTUS_MAX_BATCH_SIZE: texts per encoder call
    max_batch_tokens: int = 8192  # CERTUS_MAX_BATCH_TOKENS: padded tokens per model batch (the encoder cuts by real tokens)
    max_wait_ms: float = 2.0  # CERTUS_MAX_WAIT_MS: longer waits merge more, cost latency
    max_queue: int = 4096  # CERTUS_MAX_QUEUE: pending texts; beyond it RESOURCE_EXHAUSTED at once
    cache_entries: int = 50_000  # CERTUS_CACHE_ENTRIES: embedding cache keyed by content hash
    # token states of the texts scored (about 200 KB per 100-word chunk): the claim alignment's cache
    token_cache_mb: int = 256  # CERTUS_TOKEN_CACHE_MB; 0 = none (each scored text encoded again)


@dataclass(frozen=True)
class ScoringConfig:
    match_threshold: float = 0.7  # CERTUS_MATCH_THRESHOLD: CERT's default `matched` threshold
    # A claim is supported when the verifier's P(supported) reaches this (certus.sidecar.verifier).
    claim_support_threshold: float = 0.7  # CERTUS_CLAIM_SUPPORT_THRESHOLD; = the default manifest's faithfulness min
    # Verifier weights (JSON written by `certus-sidecar models train-verifier`); empty = the shipped ones.
    verifier_path: str = ""  # CERTUS_VERIFIER


@dataclass(frozen=True)
class GuardrailsConfig:
    # CERTUS_PII_NER: named entities for PII (PERSON, LOCATION, DATE_TIME, ORGANIZATION). Off =
    # Presidio's pattern recognizers only (email, phone, card, IBAN, IP, SSN, street address).
    pii_ner: bool = True
    # CERTUS_PII_NER_MODEL: what finds PERSON, LOCATION, DATE_TIME and ORGANIZATION when pii_ner is on.
    # "minilm": a tagger head on the token states the encoder already computes for the response's
    # sentences (certus.sidecar.guardrails.pii_ner; no spaCy NER; the child process of pii_process then
    # runs Presidio's pattern recognizers only); "spacy": spaCy's en_core_web_sm NER, the teacher the
    # head was trained from.
    pii_ner_model: str = "minilm"
    # CERTUS_PII_PROCESS: run the PII analyzer (Presidio's recognizers, and spaCy NER when that is the
    # NER model) in a child process, so its GIL-bound Python runs beside the server's instead of taking
    # turns with it. Off = in-process.
    pii_process: bool = True


@dataclass(frozen=True)
class EvidenceConfig:
    log_dir: Path = DEFAULT_HOME / "evidence"  # CERTUS_EVIDENCE_DIR
    key_path: Path = DEFAULT_HOME / "keys" / "signing.key"  # CERTUS_SIGNING_KEY (generated if absent)
    segment_bytes: int = 64 * 1024 * 1024  # CERTUS_SEGMENT_BYTES: roll to a new segment file
    fsync: str = "group"  # CERTUS_FSYNC: group (many decisions, one fsync) | always | never (tests only)
    # CERTUS_GROUP_COMMIT_MAX_WAIT_MS: 0 = natural group commit (appends that arrive during one fsync
    # share the next); > 0 also waits that long after the first pending append for more. Measured
    # (tests/benchmarks/bench_evidence.py): waiting only adds latency and lowers throughput locally.
    group_commit_max_wait_ms: float = 0.0
    # CERTUS_CHECKPOINT_INTERVAL_S: sign a Merkle checkpoint of the log this often while it grows
    # (and always on shutdown); 0 = only on shutdown
    checkpoint_interval_s: float = 10.0
    # CERTUS_CHECKPOINT_ORIGIN: the checkpoints' origin line (and note key name); empty = the log's
    # own "certus-evaluate/<first 16 hex of record 0's evidence id>", fixed by the first checkpoint
    checkpoint_origin: str = ""
    # CERTUS_NEXT_SIGNING_KEY: a key file that, once it exists, the running log rotates to (a
    # signed rotation record made with the old key names it); empty = "<key_path>.next", which
    # `certus-sidecar keygen --rotate` writes
    next_key_path: Path | None = None


@dataclass(frozen=True)
class ForwarderConfig:
    sink: str = "file"  # CERTUS_INTEGRITY_SINK: file | grpc | http | none
    url: str = ""  # CERTUS_INTEGRITY_URL: grpc host:port or http(s)://host:port
    api_key: str = field(default="", repr=False)  # CERTUS_API_KEY: bearer key for the sink
    file_path: Path = DEFAULT_HOME / "integrity" / "decisions.jsonl"  # CERTUS_INTEGRITY_FILE
    outbox_dir: Path = DEFAULT_HOME / "outbox"  # CERTUS_OUTBOX_DIR
    batch_size: int = 100  # CERTUS_FORWARD_BATCH_SIZE
    linger_ms: float = 50.0  # CERTUS_FORWARD_LINGER_MS: wait this long for a batch to fill (0 = send at once)
    timeout_s: float = 5.0  # CERTUS_FORWARD_TIMEOUT_S
    failure_threshold: int = 3  # CIRCUIT_BREAKER_FAILURE_THRESHOLD
    recovery_timeout_s: float = 30.0  # CIRCUIT_BREAKER_TIMEOUT_SECONDS
    backoff_initial_s: float = 0.2  # CERTUS_FORWARD_BACKOFF_INITIAL_S
    backoff_max_s: float = 30.0  # CERTUS_FORWARD_BACKOFF_MAX_S
    # CERTUS_MLFLOW_TRACKING_URI: also log each decision as an MLflow run (e.g. sqlite:///path/mlflow.db
    # or an http(s) tracking server), by a second forwarder with its own cursor; "" = off
    mlflow_tracking_uri: str = ""


@dataclass(frozen=True)
class ManifestConfig:
    manifest_dir: Path = DEFAULT_HOME / "manifests"  # CERTUS_MANIFEST_DIR (embedded default if empty)
    trusted_keys: tuple[Path, ...] = ()  # CERTUS_MANIFEST_TRUSTED_KEYS (comma separated pub key files)
    reload_interval_s: float = 1.0  # CERTUS_MANIFEST_RELOAD_S: poll for changes
    default_timeout_ms: int = 2000  # DEFAULT_EVALUATION_TIMEOUT_MS
    default_mode: str = "shadow"  # DEFAULT_MODE


@dataclass(frozen=True)
class AsyncConfig:
    max_jobs: int = 10_000  # CERTUS_ASYNC_MAX_JOBS: bounded job table
    ttl_s: float = 600.0  # CERTUS_ASYNC_TTL_S: results kept until fetched or expired


@dataclass(frozen=True)
class TelemetryConfig:
    log_level: str = "INFO"  # LOG_LEVEL
    log_format: str = "json"  # LOG_FORMAT: json | text
    service_name: str = "certus-evaluate"  # OTEL_SERVICE_NAME
    # Traces are exported only when asked (standard OTel names; see docs/observability.md):
    traces_exporter: str = ""  # OTEL_TRACES_EXPORTER: otlp,console,none; "" = otlp if an endpoint is set
    otlp_endpoint: str = ""  # OTEL_EXPORTER_OTLP_ENDPOINT, e.g. http://collector:4317
    otlp_traces_endpoint: str = ""  # OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (wins over the general one)
    otlp_protocol: str = ""  # OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL: grpc (default) | http/protobuf
    # OTEL_TRACES_SAMPLER: parentbased_always_on (default) | parentbased_traceidratio | traceidratio |
    # always_on | always_off | parentbased_always_off; a ratio cuts the export cost at high QPS
    traces_sampler: str = ""
    traces_sampler_arg: str = ""  # OTEL_TRACES_SAMPLER_ARG: the ratio for the *traceidratio samplers
    sdk_disabled: bool = False  # OTEL_SDK_DISABLED: no tracing at all
    # CERTUS_METRICS_MAX_WORKSPACES: workspaces without a manifest get their own metric label up to
    # this many; later ones share workspace_id="other" (bounded label cardinality)
    metrics_max_workspaces: int = 100


@dataclass(frozen=True)
class AuthConfig:
    # CERTUS_AUTH_TOKENS_FILE: JSON/TOML list of {name, token_sha256, workspaces, scopes}; unset = no
    # auth (allowed on loopback only, see docs/security.md)
    tokens_file: Path | None = None
    # CERTUS_JWT_KEYS: PEM public key(s) or a JWKS file; JWT bearer tokens (spec §6.1) are accepted
    # beside the static tokens when set (sidecar/security/jwt_auth.py). Issuer and audience required.
    jwt_keys_file: Path | None = None
    jwt_issuer: str = ""  # CERTUS_JWT_ISSUER: required iss
    jwt_audience: str = ""  # CERTUS_JWT_AUDIENCE: required aud
    jwt_algorithms: str = "RS256,ES256,EdDSA"  # CERTUS_JWT_ALGORITHMS: asymmetric only
    jwt_leeway_s: float = 30.0  # CERTUS_JWT_LEEWAY_S: clock skew allowed on exp/nbf/iat
    tls_cert: Path | None = None  # CERTUS_TLS_CERT
    tls_key: Path | None = None  # CERTUS_TLS_KEY
    tls_client_ca: Path | None = None  # CERTUS_TLS_CLIENT_CA: set to require client certs (mTLS)
    rate_limit_rps: float = 0.0  # CERTUS_RATE_LIMIT_RPS per workspace; 0 = unlimited
    rate_limit_burst: int = 0  # CERTUS_RATE_LIMIT_BURST: bucket size; 0 = ceil(rps), at least 1
    # CERTUS_RATE_LIMIT_MAX_BUCKETS: bounds the bucket table (least recently used dropped beyond it)
    rate_limit_max_buckets: int = 10_000


@dataclass(frozen=True)
class DashboardConfig:
    # CERTUS_DASHBOARD_ADDRESS: the web dashboard (sidecar/dashboard) on this address, e.g.
    # 127.0.0.1:8090; "" = off. A non-loopback address needs auth (tokens or JWT) and TLS.
    address: str = ""
    # CERTUS_DASHBOARD_DIR: its own state (the evidence index, generated reports, calibration runs);
    # empty = <CERTUS_HOME>/dashboard
    state_dir: Path | None = None
    # CERTUS_DASHBOARD_CALIBRATION_DIR: labelled JSONL files the calibration page offers to choose
    # (uploads work without it)
    calibration_dir: Path | None = None
    max_claims: int = 100_000  # CERTUS_DASHBOARD_MAX_CLAIMS: evaluations whose claim spans are kept
    index_interval_s: float = 1.0  # CERTUS_DASHBOARD_INDEX_S: how often the index follows the log


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    batcher: BatcherConfig = field(default_factory=BatcherConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    guardrails: GuardrailsConfig = field(default_factory=GuardrailsConfig)
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)
    forwarder: ForwarderConfig = field(default_factory=ForwarderConfig)
    manifests: ManifestConfig = field(default_factory=ManifestConfig)
    async_jobs: AsyncConfig = field(default_factory=AsyncConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)

    def replace(self, **sections: Any) -> "Config":
        """``cfg.replace(server={"address": "..."})``: a copy with some fields changed."""
        kw = {}
        for name, changes in sections.items():
            kw[name] = dataclasses.replace(getattr(self, name), **changes)
        return dataclasses.replace(self, **kw)


# env var -> (section, field)
ENV: dict[str, tuple[str, str]] = {
    "CERTUS_ADDRESS": ("server", "address"),
    "CERTUS_GRACE_S": ("server", "grace_s"),
    "CERTUS_MAX_MESSAGE_BYTES": ("server", "max_message_bytes"),
    "CERTUS_MAX_CONCURRENT_RPCS": ("server", "max_concurrent_rpcs"),
    "CERTUS_MAX_CONCURRENT_STREAMS": ("server", "max_concurrent_streams"),
    "CERTUS_ALLOW_INSECURE_REMOTE": ("server", "allow_insecure_remote"),
    "CERTUS_METRICS_ADDRESS": ("server", "metrics_address"),
    "CERTUS_REST_ADDRESS": ("server", "rest_address"),
    "CERTUS_HEALTH_ADDRESS": ("server", "health_address"),
    "CERTUS_UVLOOP": ("server", "use_uvloop"),
    "CERTUS_MEMORY_RECLAIM_S": ("server", "memory_reclaim_interval_s"),
    "CERTUS_MEMORY_RECLAIM_GROWTH_MIB": ("server", "memory_reclaim_growth_mib"),
    "CERTUS_ADMISSION_TARGET_MS": ("server", "admission_target_ms"),
    "CERTUS_ADMISSION_MIN_IN_FLIGHT": ("server", "admission_min_in_flight"),
    "CERTUS_FRONTENDS": ("server", "frontends"),
    "CERTUS_STAGE_THREADS": ("server", "stage_threads"),
    "CERTUS_MODEL_DIR": ("model", "model_dir"),
    "CERTUS_MODEL_VARIANT": ("model", "variant"),
    "CERTUS_PROVIDER": ("model", "provider"),
    "CERTUS_INTRA_OP_THREADS": ("model", "intra_op_threads"),
    "CERTUS_ARENA_SHRINK_TOKENS": ("model", "arena_shrink_tokens"),
    "CERTUS_MAX_SEQ_LEN": ("model", "max_seq_len"),
    "CERTUS_EXPORT_PYTHON": ("model", "export_python"),
    "CERTUS_MAX_BATCH_SIZE": ("batcher", "max_batch_size"),
    "CERTUS_MAX_BATCH_TOKENS": ("batcher", "max_batch_tokens"),
    "CERTUS_MAX_WAIT_MS": ("batcher", "max_wait_ms"),
    "CERTUS_MAX_QUEUE": ("batcher", "max_queue"),
    "CERTUS_CACHE_ENTRIES": ("batcher", "cache_entries"),
    "CERTUS_TOKEN_CACHE_MB": ("batcher", "token_cache_mb"),
    "CERTUS_MATCH_THRESHOLD": ("scoring", "match_threshold"),
    "CERTUS_CLAIM_SUPPORT_THRESHOLD": ("scoring", "claim_support_threshold"),
    "CERTUS_VERIFIER": ("scoring", "verifier_path"),
    "CERTUS_PII_NER": ("guardrails", "pii_ner"),
    "CERTUS_PII_PROCESS": ("guardrails", "pii_process"),
    "CERTUS_PII_NER_MODEL": ("guardrails", "pii_ner_model"),
    "CERTUS_EVIDENCE_DIR": ("evidence", "log_dir"),
    "CERTUS_SIGNING_KEY": ("evidence", "key_path"),
    "CERTUS_SEGMENT_BYTES": ("evidence", "segment_bytes"),
    "CERTUS_FSYNC": ("evidence", "fsync"),
    "CERTUS_GROUP_COMMIT_MAX_WAIT_MS": ("evidence", "group_commit_max_wait_ms"),
    "CERTUS_CHECKPOINT_INTERVAL_S": ("evidence", "checkpoint_interval_s"),
    "CERTUS_CHECKPOINT_ORIGIN": ("evidence", "checkpoint_origin"),
    "CERTUS_NEXT_SIGNING_KEY": ("evidence", "next_key_path"),
    "CERTUS_INTEGRITY_SINK": ("forwarder", "sink"),
    "CERTUS_INTEGRITY_URL": ("forwarder", "url"),
    "CERTUS_API_KEY": ("forwarder", "api_key"),
    "CERTUS_INTEGRITY_FILE": ("forwarder", "file_path"),
    "CERTUS_OUTBOX_DIR": ("forwarder", "outbox_dir"),
    "CERTUS_FORWARD_BATCH_SIZE": ("forwarder", "batch_size"),
    "CERTUS_FORWARD_LINGER_MS": ("forwarder", "linger_ms"),
    "CERTUS_FORWARD_TIMEOUT_S": ("forwarder", "timeout_s"),
    "CIRCUIT_BREAKER_FAILURE_THRESHOLD": ("forwarder", "failure_threshold"),
    "CIRCUIT_BREAKER_TIMEOUT_SECONDS": ("forwarder", "recovery_timeout_s"),
    "CERTUS_FORWARD_BACKOFF_INITIAL_S": ("forwarder", "backoff_initial_s"),
    "CERTUS_FORWARD_BACKOFF_MAX_S": ("forwarder", "backoff_max_s"),
    "CERTUS_MLFLOW_TRACKING_URI": ("forwarder", "mlflow_tracking_uri"),
    "CERTUS_MANIFEST_DIR": ("manifests", "manifest_dir"),
    "CERTUS_MANIFEST_TRUSTED_KEYS": ("manifests", "trusted_keys"),
    "CERTUS_MANIFEST_RELOAD_S": ("manifests", "reload_interval_s"),
    "DEFAULT_EVALUATION_TIMEOUT_MS": ("manifests", "default_timeout_ms"),
    "DEFAULT_MODE": ("manifests", "default_mode"),
    "CERTUS_ASYNC_MAX_JOBS": ("async_jobs", "max_jobs"),
    "CERTUS_ASYNC_TTL_S": ("async_jobs", "ttl_s"),
    "LOG_LEVEL": ("telemetry", "log_level"),
    "LOG_FORMAT": ("telemetry", "log_format"),
    "OTEL_SERVICE_NAME": ("telemetry", "service_name"),
    "OTEL_TRACES_EXPORTER": ("telemetry", "traces_exporter"),
    "OTEL_EXPORTER_OTLP_ENDPOINT": ("telemetry", "otlp_endpoint"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("telemetry", "otlp_traces_endpoint"),
    "OTEL_EXPORTER_OTLP_PROTOCOL": ("telemetry", "otlp_protocol"),
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ("telemetry", "otlp_protocol"),
    "OTEL_TRACES_SAMPLER": ("telemetry", "traces_sampler"),
    "OTEL_TRACES_SAMPLER_ARG": ("telemetry", "traces_sampler_arg"),
    "OTEL_SDK_DISABLED": ("telemetry", "sdk_disabled"),
    "CERTUS_METRICS_MAX_WORKSPACES": ("telemetry", "metrics_max_workspaces"),
    "CERTUS_AUTH_TOKENS_FILE": ("auth", "tokens_file"),
    "CERTUS_JWT_KEYS": ("auth", "jwt_keys_file"),
    "CERTUS_JWT_ISSUER": ("auth", "jwt_issuer"),
    "CERTUS_JWT_AUDIENCE": ("auth", "jwt_audience"),
    "CERTUS_JWT_ALGORITHMS": ("auth", "jwt_algorithms"),
    "CERTUS_JWT_LEEWAY_S": ("auth", "jwt_leeway_s"),
    "CERTUS_TLS_CERT": ("auth", "tls_cert"),
    "CERTUS_TLS_KEY": ("auth", "tls_key"),
    "CERTUS_TLS_CLIENT_CA": ("auth", "tls_client_ca"),
    "CERTUS_RATE_LIMIT_RPS": ("auth", "rate_limit_rps"),
    "CERTUS_RATE_LIMIT_BURST": ("auth", "rate_limit_burst"),
    "CERTUS_RATE_LIMIT_MAX_BUCKETS": ("auth", "rate_limit_max_buckets"),
    "CERTUS_DASHBOARD_ADDRESS": ("dashboard", "address"),
    "CERTUS_DASHBOARD_DIR": ("dashboard", "state_dir"),
    "CERTUS_DASHBOARD_CALIBRATION_DIR": ("dashboard", "calibration_dir"),
    "CERTUS_DASHBOARD_MAX_CLAIMS": ("dashboard", "max_claims"),
    "CERTUS_DASHBOARD_INDEX_S": ("dashboard", "index_interval_s"),
}


class ConfigError(ValueError):
    """A setting that cannot be read; the message names where it came from and the field."""


PII_NER_MODELS = ("minilm", "spacy")
# string fields that take one of a few values
CHOICES: dict[tuple[str, str], tuple[str, ...]] = {("guardrails", "pii_ner_model"): PII_NER_MODELS}
# integer fields with a lower bound
AT_LEAST: dict[tuple[str, str], int] = {("server", "stage_threads"): 1}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _coerce(section: Any, name: str, raw: Any) -> Any:
    """``raw`` (an environment string, a TOML value or an override) as the field's type; a value
    that is not one raises ValueError saying what was expected."""
    current = {f.name: f for f in dataclasses.fields(section)}[name]
    t = str(current.type)
    if t.startswith("tuple"):
        parts = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(parts, (list, tuple)):
            raise ValueError(f"must be a list of paths, got {raw!r}")
        return tuple(Path(str(p).strip()) for p in parts if str(p).strip())
    if "Path" in t:
        if raw is None or raw == "":
            if "None" in t:
                return None
            raise ValueError("must be a path, got an empty value")
        if not isinstance(raw, (str, Path)):
            raise ValueError(f"must be a path, got {raw!r}")
        return Path(raw).expanduser()
    if t == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ValueError(f"must be a boolean (true/false, 1/0, yes/no, on/off), got {raw!r}")
    if t in ("int", "float"):
        expected = "an integer" if t == "int" else "a number"
        if isinstance(raw, bool):
            raise ValueError(f"must be {expected}, got {raw!r}")
        if t == "int" and isinstance(raw, int):
            return raw
        if t == "float" and isinstance(raw, (int, float)):
            return float(raw)
        if isinstance(raw, str):
            try:
                return int(raw) if t == "int" else float(raw)
            except ValueError:
                pass
        raise ValueError(f"must be {expected}, got {raw!r}")
    if not isinstance(raw, str):
        raise ValueError(f"must be a string, got {raw!r}")
    return raw


def load(
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build the configuration from defaults, a TOML file, the environment and overrides."""
    env = os.environ if env is None else env
    cfg = Config()
    changes: dict[str, dict[str, Any]] = {}

    def put(section: str, name: str, raw: Any, source: str) -> None:
        sec = getattr(cfg, section)
        try:
            value = _coerce(sec, name, raw)
            choices = CHOICES.get((section, name))
            if choices is not None and value not in choices:
                raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
            low = AT_LEAST.get((section, name))
            if low is not None and value < low:
                raise ValueError(f"must be at least {low}, got {value!r}")
            changes.setdefault(section, {})[name] = value
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source} ({section}.{name}): {exc}") from None

    path = file or env.get("CERTUS_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for section, values in data.items():
            if not hasattr(cfg, section):
                raise ConfigError(f"{path}: unknown config section [{section}]")
            for name, raw in values.items():
                if name not in {f.name for f in dataclasses.fields(getattr(cfg, section))}:
                    raise ConfigError(f"{path}: unknown config field {section}.{name}")
                put(section, name, raw, str(path))
    for var, (section, name) in ENV.items():
        if var in env:
            put(section, name, env[var], var)
    for section, values in (overrides or {}).items():
        for name, raw in values.items():
            put(section, name, raw, "override")
    return cfg.replace(**changes)
