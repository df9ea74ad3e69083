"""MLflow run logging against a real MLflow store (SQLite backend, the MLflow client library):
each decision of the real sidecar becomes a run in the workspace's experiment (or the manifest's
``mlflow_experiment_name``) with its metrics, tags and ``decision.json``, hashes only; an unreachable
tracking server never touches the answers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from certus.sidecar.protos import pb
from tests.conftest import free_port, make_config, start_sidecar, write_manifest

QUERY = "Who gave their name to Normandy? (mlflow)"


def _request(workspace: str) -> Any:
    return pb.EvaluateRequest(
        workspace_id=workspace,
        query=QUERY,
        response="The Normans gave their name to Normandy, a region in France.",
        context=["The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."],
    )


def _wait(pred: Any, what: str, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while not pred():
        assert time.time() < deadline, what
        time.sleep(0.05)


def test_each_decision_is_an_mlflow_run(tmp_path: Path, encoder: Any) -> None:
    db = tmp_path / "mlflow" / "mlflow.db"
    db.parent.mkdir()
    uri = f"sqlite:///{db}"
    write_manifest(tmp_path / "manifests", "named", "2025-01", mlflow_experiment_name="custom-exp")
    sc = start_sidecar(make_config(tmp_path, forwarder={"mlflow_tracking_uri": uri}), encoder=encoder)
    try:
        a = sc.stub.Evaluate(_request("acme"), timeout=60)
        b = sc.stub.Evaluate(_request("named"), timeout=60)
        # both runs logged and the cursor past them (delivered is counted before the cursor moves)
        _wait(lambda: sc.app.mlflow.stats()["delivered"] >= 2 and sc.app.mlflow.stats()["backlog"] == 0, "two runs logged")
        details = dict(sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10).details)
    finally:
        sc.stop()
    assert details["mlflow.sink"] == "mlflow" and details["mlflow.backlog"] == "0"
    client = MlflowClient(tracking_uri=uri)
    for resp, experiment in ((a, "certus-evaluate-acme"), (b, "custom-exp")):
        exp = client.get_experiment_by_name(experiment)
        assert exp is not None, experiment
        (run,) = client.search_runs([exp.experiment_id], filter_string=f"tags.evidence_id = '{resp.evidence_id}'")
        assert run.info.run_name == resp.evaluation_id and run.info.status == "FINISHED"
        assert run.data.tags["outcome"] == {1: "pass", 2: "fail", 3: "warning"}.get(resp.outcome, "?")
        scores = {m.name: m.value for m in resp.metrics}
        assert run.data.metrics["faithfulness"] == scores["faithfulness"] and run.data.params["manifest_uri"] == resp.manifest_uri
        local = client.download_artifacts(run.info.run_id, "decision.json", str(tmp_path / "dl" / run.info.run_id))
        text = Path(local).read_text()
        decision = json.loads(text)
        assert decision["decision_id"] == resp.evaluation_id and decision["query_hash"].startswith("sha256:")
        assert "Normandy" not in text  # hashes, ids and scores only: no content reaches MLflow


def test_an_unreachable_tracking_server_never_touches_the_answers(tmp_path: Path, encoder: Any) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = make_config(tmp_path, forwarder={"mlflow_tracking_uri": uri, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "timeout_s": 1.0})
    sc = start_sidecar(cfg, encoder=encoder)
    try:
        resp = sc.stub.Evaluate(_request("acme"), timeout=60)
        assert not resp.skipped and resp.evidence_id.startswith("sha256:")
        _wait(lambda: sc.app.mlflow.stats()["failures"] >= 1, "a failed attempt", timeout_s=120)
        st = sc.app.mlflow.stats()
    finally:
        sc.stop()
    assert st["delivered"] == 0 and st["backlog"] >= 1 and "mlflow" in st["last_error"]
    assert sc.app.forwarder.stats()["backlog"] == 0  # the integrity forwarder is not held up
