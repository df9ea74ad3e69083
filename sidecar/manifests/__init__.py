"""Workspace evaluation manifests: model, validation, signed envelopes and the hot-reloading store."""

from __future__ import annotations

from certus.sidecar.manifests.model import (
    LATEST,
    METRIC_NAMES,
    Manifest,
    ThresholdConfig,
    manifest_uri,
    seed_guardrail_defaults,
)
from certus.sidecar.manifests.schema import (
    ManifestDefaults,
    ManifestError,
    build_manifest,
    decode_document,
    document_json,
    file_format,
    load_file,
    load_trusted_keys,
    parse_bytes,
)
from certus.sidecar.manifests.store import DEFAULT_WORKSPACE, ManifestStore, defaults_from_config, load_embedded_default

__all__ = [
    "DEFAULT_WORKSPACE",
    "LATEST",
    "METRIC_NAMES",
    "Manifest",
    "ManifestDefaults",
    "ManifestError",
    "ManifestStore",
    "ThresholdConfig",
    "build_manifest",
    "decode_document",
    "defaults_from_config",
    "document_json",
    "file_format",
    "load_embedded_default",
    "load_file",
    "load_trusted_keys",
    "manifest_uri",
    "parse_bytes",
    "seed_guardrail_defaults",
]
