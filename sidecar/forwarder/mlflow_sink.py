"""MLflow run logging (spec §3.2) as a sink of its own forwarder.

With ``CERTUS_MLFLOW_TRACKING_URI`` set (for example ``sqlite:////var/lib/certus/mlflow.db`` or an
``http(s)://`` tracking server) the App runs a second :class:`~sidecar.forwarder.Forwarder` over the
evidence log with this sink and its own cursor (``<outbox>/mlflow``): the same background delivery,
retry with backoff, circuit breaker and dead letters as the integrity forwarder, entirely off the
request path. Each decision becomes one MLflow run:

- experiment: the manifest's ``mlflow_experiment_name``, else ``certus-evaluate-{workspace_id}``
  (created on first use; with a ``sqlite:`` store its artifacts go beside the database);
- run name: the decision id; tags: ``evidence_id``, ``decision_id``, ``outcome``, ``workspace_id``,
  ``mode``, ``skip_reason``, ``key_id``, ``seq``; params: ``manifest_uri``, ``decision_type``;
  metrics: every metric score and ``overall_score``, timestamped with the decision's time;
- artifact ``decision.json``: the signed decision payload, which holds hashes, ids, scores and
  locations only. The evidence log never holds content, so ``log_full_content`` has nothing to add
  here: runs carry hashes only, always.

The MLflow client library (``mlflow-skinny``; ``pip install 'certus-evaluate[mlflow]'``) is imported
only when a tracking URI is set. Delivery is at least once: a crash between a batch's runs and the
cursor write logs that batch again.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import structlog

from certus.sidecar.evidence.decision import parse_utc_timestamp
from certus.sidecar.evidence.records import LogRecord
from certus.sidecar.forwarder.sinks import DeliveryError
from certus.sidecar.forwarder.wire import ACCEPTED, CheckpointReceipt, CheckpointSubmission, Receipt

log = structlog.get_logger(__name__)

ExperimentFor = Callable[[str, str], str]  # (workspace_id, manifest_uri) -> experiment name


def default_experiment(workspace_id: str, manifest_uri: str) -> str:
    return f"certus-evaluate-{workspace_id}"


class MlflowSink:
    name = "mlflow"

    def __init__(self, tracking_uri: str, experiment_for: ExperimentFor = default_experiment, *, timeout_s: float = 5.0) -> None:
        if not tracking_uri:
            raise ValueError("forwarder.mlflow_tracking_uri: required for the mlflow sink")
        self.tracking_uri = tracking_uri
        self._experiment_for = experiment_for
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        self._lock = threading.Lock()
        self.runs_logged = 0
        self._timeout_s = timeout_s

    def _mlflow(self) -> Any:
        if self._client is None:
            # the forwarder owns retries and backoff: MLflow's HTTP client makes one attempt within
            # the forwarder's attempt timeout (unless the operator set these)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, int(self._timeout_s))))
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise DeliveryError("mlflow is not installed: pip install 'certus-evaluate[mlflow]'", retryable=False, code="config") from exc
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _artifact_location(self, name: str) -> str | None:
        if self.tracking_uri.startswith("sqlite:///"):
            db = Path(self.tracking_uri[len("sqlite:///") :])
            return (db.parent / "mlartifacts" / name).resolve().as_uri()
        return None

    def _experiment_id(self, name: str) -> str:
        found = self._experiments.get(name)
        if found is not None:
            return found
        client = self._mlflow()
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(name, artifact_location=self._artifact_location(name))
        self._experiments[name] = exp_id
        return str(exp_id)

    def _log(self, rec: LogRecord) -> Receipt:
        from mlflow.entities import Metric, Param, RunTag

        d = rec.payload
        client = self._mlflow()
        experiment = self._experiment_id(self._experiment_for(str(d.get("workspace_id", "")), str(d.get("manifest_uri", ""))))
        try:
            when = int(parse_utc_timestamp(str(d.get("timestamp", ""))).timestamp() * 1000)
        except ValueError:
            when = 0
        tags = {
            "evidence_id": rec.evidence_id,
            "decision_id": rec.decision_id,
            "outcome": str(d.get("outcome", "")),
            "workspace_id": str(d.get("workspace_id", "")),
            "mode": str(d.get("mode", "")),
            "skip_reason": str(d.get("skip_reason") or ""),
            "key_id": str(d.get("key_id", "")),
            "seq": str(rec.seq),
        }
        run = client.create_run(experiment, start_time=when or None, tags=tags, run_name=rec.decision_id)
        metrics = [Metric(str(m["name"]), float(m["value"]), when, 0) for m in d.get("metrics", []) if m.get("value") is not None]
        if d.get("overall_score") is not None:
            metrics.append(Metric("overall_score", float(d["overall_score"]), when, 0))
        params = [Param("manifest_uri", str(d.get("manifest_uri", ""))), Param("decision_type", str(d.get("decision_type", "")))]
        client.log_batch(run.info.run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()])
        client.log_text(run.info.run_id, json.dumps(d, indent=2, sort_keys=True), "decision.json")
        client.set_terminated(run.info.run_id)
        self.runs_logged += 1
        return Receipt(rec.decision_id, ACCEPTED, rec.evidence_id)

    def _send(self, records: Sequence[LogRecord]) -> list[Receipt]:
        with self._lock:
            return [self._log(r) for r in records]

    async def send(self, records: Sequence[LogRecord]) -> list[Receipt]:
        try:
            return await asyncio.to_thread(self._send, records)
        except DeliveryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a store that is down or locked: retry with backoff
            raise DeliveryError(f"mlflow {self.tracking_uri.split('://', 1)[0]}: {type(exc).__name__}: {exc}"[:500], retryable=True, code="mlflow") from exc

    async def send_checkpoint(self, sub: CheckpointSubmission) -> CheckpointReceipt:
        raise DeliveryError("an MLflow store keeps runs, not checkpoints", retryable=False, code="unimplemented")

    async def close(self) -> None:
        return None
