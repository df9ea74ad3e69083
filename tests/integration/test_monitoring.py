"""The shipped monitoring: the Grafana dashboard and the Prometheus rules use only metric names and
labels the real sidecar exports (scraped from a running one that made real decisions); promtool
checks the rules and the config and runs the alert unit tests (deploy/prometheus/rules_test.yml);
deploy/compose.yaml holds together (no Docker engine here: its references are checked)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from certus.sidecar.protos import pb
from tests.conftest import free_port, make_config, start_sidecar

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "certus-evaluate.json"
RULES = DEPLOY / "prometheus" / "rules.yml"
NAME = re.compile(r"\bcertus_evaluate_[a-z0-9_]+")
BY = re.compile(r"\bby\s*\(([^)]*)\)")


def _exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs.append(dash["templating"]["list"][0]["query"]["query"])
    rules = yaml.safe_load(RULES.read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    return exprs


def test_dashboard_and_rules_use_only_what_the_sidecar_exports(tmp_path: Path, encoder: Any) -> None:
    metrics = f"127.0.0.1:{free_port()}"
    sc = start_sidecar(make_config(tmp_path, server={"metrics_address": metrics}), encoder=encoder)
    try:
        for i in range(3):  # real decisions with a PII finding each, then a skipped one
            sc.stub.Evaluate(
                pb.EvaluateRequest(
                    workspace_id="acme",
                    query=f"Who gave their name to Normandy? {i}",
                    response="The Normans did. Write to jane.doe@example.com.",
                    context=["The Normans gave their name to Normandy."],
                ),
                timeout=60,
            )
        skipped = sc.stub.Evaluate(
            pb.EvaluateRequest(workspace_id="acme", query="q?", response="a.", context=["c"], mode=pb.EVALUATION_MODE_DISABLED), timeout=60
        )
        assert skipped.skipped and skipped.skip_reason == "mode_disabled"
        text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
    finally:
        sc.stop()
    samples: dict[str, set[str]] = {}  # sample name -> label names
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    problems = []
    for expr in _exprs():
        names = set(NAME.findall(expr))
        assert names, expr
        missing = sorted(n for n in names if n not in samples)
        if missing:
            problems.append(f"{expr}: not exported: {missing}")
            continue
        labels = set().union(*(samples[n] for n in names)) | {"le", "instance", "job"}
        for group in BY.findall(expr):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                if label not in labels:
                    problems.append(f"{expr}: label {label!r} is not on {sorted(names)}")
    assert not problems, "\n".join(problems)


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found (Debian: apt-get install prometheus; .ci/run installs it)")
@pytest.mark.parametrize(
    "args",
    [("check", "rules", "rules.yml"), ("test", "rules", "rules_test.yml"), ("check", "config", "prometheus.yml")],
    ids=["check-rules", "alert-unit-tests", "check-config"],
)
def test_promtool(args: tuple[str, ...]) -> None:
    r = subprocess.run([str(PROMTOOL), *args], cwd=DEPLOY / "prometheus", capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found")
def test_promtool_catches_a_wrong_expectation(tmp_path: Path) -> None:
    """The alert unit tests can fail: the same tests against a rule with a changed threshold."""
    broken = RULES.read_text().replace("certus_evaluate_circuit_breaker_state == 1", "certus_evaluate_circuit_breaker_state == 2")
    (tmp_path / "rules.yml").write_text(broken)
    shutil.copy(DEPLOY / "prometheus" / "rules_test.yml", tmp_path / "rules_test.yml")
    r = subprocess.run([str(PROMTOOL), "test", "rules", "rules_test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0 and "CertusIntegrityBreakerOpen" in r.stdout + r.stderr


def test_compose_stack_holds_together() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"sidecar", "receiver", "prometheus", "grafana"}
    side = services["sidecar"]
    assert (DEPLOY / side["build"]["context"] / side["build"]["dockerfile"]).is_file()
    env = side["environment"]
    # every published port is on loopback
    for svc in services.values():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    # bind mounts point at files of this repository
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), vol
    # Prometheus scrapes the sidecar's metrics port and loads the rules it is given
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (target,) = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == "sidecar:" + env["CERTUS_METRICS_ADDRESS"].rsplit(":", 1)[1]
    mounted = {v.split(":")[1] for v in services["prometheus"]["volumes"]}
    assert {f"/etc/prometheus/{f}" for f in prom["rule_files"]} <= mounted
    # the sidecar forwards to the receiver's gRPC port; the receiver trusts the sidecar's key
    cmd = services["receiver"]["command"]
    assert env["CERTUS_INTEGRITY_SINK"] == "grpc" and env["CERTUS_INTEGRITY_URL"] == "receiver:" + cmd[cmd.index("--grpc") + 1].rsplit(":", 1)[1]
    key = cmd[cmd.index("--key") + 1]
    shared = next(v for v in services["receiver"]["volumes"] if v.startswith("certus-data:"))
    mount_at = shared.split(":")[1]
    assert key == f"{mount_at}/keys/signing.key.pub" and side["volumes"] == [f"certus-data:{env['CERTUS_HOME']}"]
    assert services["receiver"]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    # Grafana: the provisioned datasource is the compose Prometheus, the dashboard folder is mounted
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["uid"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "certus.yml").read_text())["providers"][0]
    graf_mounts = dict(reversed(v.split(":")[:2]) for v in services["grafana"]["volumes"])
    assert (DEPLOY / graf_mounts[provider["options"]["path"]] / DASHBOARD.name).is_file()
    dash = json.loads(DASHBOARD.read_text())
    assert all(t["datasource"]["uid"] == ds["uid"] for p in dash["panels"] for t in p["targets"])
