"""The deployment files: Dockerfile, .dockerignore and deploy/k8s/*.yaml.

No container engine runs here, so the image itself is not built by this test. What is checked is
everything that can be checked without one: the YAML parses into the objects Kubernetes expects;
every env var the manifests and the Dockerfile set is one the sidecar reads (a typo would be
silently ignored) and its value loads through the real config loader; mounts, volumes, ConfigMap
items and paths agree; the example manifest loads through the real manifest store; the
non-loopback example carries auth; the GPU base image's CUDA matches the onnxruntime-gpu build;
the Dockerfile's inline Python (dependency lists, health check) runs; and the health-check
commands of the image and of the pod exit 0 against a SERVING sidecar and non-zero when none is
listening.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from certus.sidecar import config as config_mod
from certus.sidecar.config import ManifestConfig
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "k8s"
SIDECAR_IMAGE = "certus-evaluate"
SIDECAR_UID = 10001
# variables the sidecar does not read through sidecar.config but that the deployment may set
THIRD_PARTY_ENV = {"NUMBA_CACHE_DIR", "NUMBA_CPU_NAME", "PATH", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                   "PIP_DISABLE_PIP_VERSION_CHECK", "CERTUS_HOME"}


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, doc in k8s_docs():
        if doc["kind"] == "Pod":
            out.append((name, doc["spec"]))
        elif doc["kind"] in ("StatefulSet", "Deployment", "DaemonSet"):
            out.append((name, doc["spec"]["template"]["spec"]))
    return out


def sidecar_container(spec: dict[str, Any]) -> dict[str, Any]:
    found = [
        c
        for c in spec.get("initContainers", []) + spec.get("containers", [])
        if SIDECAR_IMAGE in c["image"] and c.get("args") == ["serve"]
    ]
    assert len(found) == 1, found
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def dockerfile_env() -> dict[str, str]:
    """ENV assignments of the Dockerfile (all stages), continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for m in re.finditer(r"([A-Z_][A-Z0-9_]*)=(\S*)", line[4:]):
                env[m.group(1)] = m.group(2)
    return env


def healthcheck_argv() -> list[str]:
    m = re.search(r"^\s+CMD (\[.*\])\s*$", DOCKERFILE.read_text().split("HEALTHCHECK", 1)[1], re.M)
    assert m, "HEALTHCHECK CMD in exec form not found"
    argv: list[str] = json.loads(m.group(1))
    return argv


# --------------------------------------------------------------------------- Kubernetes objects


def test_k8s_yaml_parses_into_kubernetes_objects() -> None:
    docs = k8s_docs()
    kinds = sorted((name, d["kind"]) for name, d in docs)
    assert ("pod.yaml", "Pod") in kinds and ("pod.yaml", "ConfigMap") in kinds
    assert ("pod.yaml", "PersistentVolumeClaim") in kinds
    assert ("statefulset.yaml", "StatefulSet") in kinds
    for name, d in docs:
        assert {"apiVersion", "kind", "metadata"} <= d.keys(), name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), name


@pytest.mark.parametrize("name,spec", pod_specs(), ids=[n for n, _ in pod_specs()])
def test_sidecar_env_names_exist_and_values_load(name: str, spec: dict[str, Any]) -> None:
    env = env_of(sidecar_container(spec))
    unknown = sorted(k for k in env if k not in config_mod.ENV and k not in THIRD_PARTY_ENV)
    assert not unknown, f"{name}: env vars the sidecar does not read: {unknown}"
    cfg = config_mod.load(env=env)  # coerces every value; a bad int/float/bool raises
    assert cfg.server.address == env["CERTUS_ADDRESS"]
    assert str(cfg.evidence.key_path) == env["CERTUS_SIGNING_KEY"]


@pytest.mark.parametrize("name,spec", pod_specs(), ids=[n for n, _ in pod_specs()])
def test_mounts_volumes_and_paths_agree(name: str, spec: dict[str, Any]) -> None:
    sc = sidecar_container(spec)
    env = env_of(sc)
    volumes = {v["name"]: v for v in spec["volumes"]} | {
        t["metadata"]["name"]: {"pvc": True} for t in _claim_templates(name)
    }
    mounts = {m["mountPath"]: m for m in sc["volumeMounts"]}
    for c in spec.get("initContainers", []) + spec["containers"]:
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{name}/{c['name']}: mount of undeclared volume {m['name']}"

    def mount_for(path: str) -> dict[str, Any]:
        best = max((p for p in mounts if path == p or path.startswith(p.rstrip("/") + "/")), key=len, default=None)
        assert best is not None, f"{name}: {path} is on no mounted volume (the root filesystem is read-only)"
        return mounts[best]

    # writable state on a writable volume, secrets and manifests read-only
    for var in ("CERTUS_EVIDENCE_DIR", "CERTUS_OUTBOX_DIR", "CERTUS_INTEGRITY_FILE"):
        assert not mount_for(env[var]).get("readOnly", False), var
    for var in ("CERTUS_SIGNING_KEY", "CERTUS_MANIFEST_DIR"):
        assert mount_for(env[var]).get("readOnly") is True, var
    # Numba's cache must be writable (its locator refuses a read-only dir) and seeded from the image
    numba_dir = dockerfile_env()["NUMBA_CACHE_DIR"]
    assert not mount_for(numba_dir).get("readOnly", False)
    seed = [c for c in spec["initContainers"] if c["name"] == "seed-numba-cache"]
    assert seed and numba_dir in " ".join(seed[0]["command"])
    assert spec["initContainers"].index(seed[0]) < spec["initContainers"].index(sc)
    mount_for("/tmp")
    # the key file the sidecar is told to read is the one the Secret volume projects
    key_mount = mount_for(env["CERTUS_SIGNING_KEY"])
    key_items = volumes[key_mount["name"]]["secret"]["items"]
    assert any(key_mount["mountPath"] + "/" + i["path"] == env["CERTUS_SIGNING_KEY"] for i in key_items)
    # hardening
    assert sc["securityContext"]["readOnlyRootFilesystem"] is True
    assert sc["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == SIDECAR_UID
    assert sc.get("restartPolicy") == "Always" and sc in spec["initContainers"]  # native sidecar
    assert spec["terminationGracePeriodSeconds"] > float(env["CERTUS_GRACE_S"])


def _claim_templates(file_name: str) -> list[dict[str, Any]]:
    out = []
    for name, doc in k8s_docs():
        if name == file_name and doc["kind"] == "StatefulSet":
            out += doc["spec"].get("volumeClaimTemplates", [])
    return out


@pytest.mark.parametrize("name,spec", pod_specs(), ids=[n for n, _ in pod_specs()])
def test_probes_match_the_listening_address(name: str, spec: dict[str, Any]) -> None:
    sc = sidecar_container(spec)
    env = env_of(sc)
    host, port = env["CERTUS_ADDRESS"].rsplit(":", 1)
    probes = [sc[p] for p in ("startupProbe", "readinessProbe", "livenessProbe")]
    if host in ("127.0.0.1", "localhost", "::1", "[::1]"):
        # the kubelet dials the pod IP: a loopback-only server needs in-container (exec) probes
        assert all("exec" in p for p in probes), name
    else:
        # on the pod IP the native gRPC probes work, and the non-loopback bind needs auth
        assert all(p.get("grpc", {}).get("port") == int(port) for p in probes), name
        assert env.get("CERTUS_AUTH_TOKENS_FILE") or env.get("CERTUS_TLS_CLIENT_CA"), name
        assert env.get("CERTUS_ALLOW_INSECURE_REMOTE") is None


def test_configmap_manifests_load_through_the_manifest_store(tmp_path: Path) -> None:
    from certus.sidecar.manifests.store import ManifestStore

    cms = {d["metadata"]["name"]: d for _, d in k8s_docs() if d["kind"] == "ConfigMap"}
    for name, spec in pod_specs():
        for vol in spec["volumes"]:
            if "configMap" not in vol:
                continue
            data = cms[vol["configMap"]["name"]]["data"]
            root = tmp_path / name / vol["name"]
            for item in vol["configMap"]["items"]:
                assert item["key"] in data, f"{name}: ConfigMap has no key {item['key']}"
                (root / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                (root / item["path"]).write_text(data[item["key"]])
            store = ManifestStore(ManifestConfig(manifest_dir=root))
            assert store.health_details() == {}, store.health_details()
            m = store.resolve("acme")
            assert m.manifest_uri == "certus://manifests/acme/2025-06"
            assert m.default_mode.value == "enforce"
            assert store.uris() == ["certus://manifests/acme/2025-06"]


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_stages_user_and_env() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)", text, re.M)
    names = [s for _, s in stages]
    assert names == ["base-cpu", "base-gpu", "base", "builder", "runtime"], names
    assert ("base-${VARIANT}", "base") in stages
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER \$\{UID\}:\$\{UID\}$", runtime, re.M)
    assert f"ARG UID={SIDECAR_UID}" in runtime
    assert "/opt/export-venv" not in runtime  # the export venv (torch, transformers) stays behind
    env = dockerfile_env()
    assert env["CERTUS_ADDRESS"] == "127.0.0.1:50051"  # pod-local loopback by default
    unknown = sorted(k for k in env if k not in config_mod.ENV and k not in THIRD_PARTY_ENV)
    assert not unknown, unknown
    assert config_mod.load(env={k: v for k, v in env.items() if "$" not in v}).model.provider in ("cpu", "auto")


def test_gpu_base_image_matches_the_onnxruntime_gpu_cuda_build() -> None:
    ort_info = pytest.importorskip("onnxruntime.capi.build_and_package_info")
    cuda = getattr(ort_info, "cuda_version", "")
    if not cuda:
        pytest.skip("the installed onnxruntime has no CUDA build (CPU-only package)")
    image = re.search(r"^ARG CUDA_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert image
    tag = image.group(1).split(":", 1)[1]
    assert tag.split(".")[0] == cuda.split(".")[0], f"CUDA base {tag} vs onnxruntime-gpu built for CUDA {cuda}"
    assert "cudnn" in tag and "runtime" in tag


def test_dockerfile_installs_from_the_locks() -> None:
    text = DOCKERFILE.read_text()
    builder = text.split("AS builder", 1)[1].split("AS runtime", 1)[0]
    installs = re.findall(r"pip install (--[^\n]*?)(?:\\\n|\n)", builder)
    locked = [line for line in installs if "-r requirements/" in line]
    assert any("serve.lock" in line for line in locked) and all("--require-hashes --no-deps" in line for line in locked)
    assert "export.lock" in builder and "model.lock" in builder
    assert "CERTUS_EXPORT_PYTHON=/opt/export-venv/bin/python" in builder
    for lock in ("serve.lock", "export.lock", "model.lock"):
        assert (ROOT / "requirements" / lock).is_file()


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), re.M)
    sources = [s for line in copied for s in line.split()]
    assert set(sources) == {
        "requirements", "pyproject.toml", "README.md", "setup.py", "proto", "clients/python", "sidecar", "kernels", "models"
    }
    for src in sources:
        for pattern in ignored:
            if pattern.startswith("!"):
                continue
            assert pattern.rstrip("/") != src, f".dockerignore excludes {src}"
            if pattern == "*.md":
                assert "!README.md" in ignored


# --------------------------------------------------------------------------- health checks run


def pod_probe_argv() -> list[str]:
    docs = [d for name, d in k8s_docs() if name == "pod.yaml" and d["kind"] == "Pod"]
    argv: list[str] = sidecar_container(docs[0]["spec"])["livenessProbe"]["exec"]["command"]
    return argv



@pytest.mark.parametrize("which", ["dockerfile", "pod"])
def test_health_check_commands_against_a_real_sidecar(which: str, sidecar: Any) -> None:
    argv = healthcheck_argv() if which == "dockerfile" else pod_probe_argv()
    assert argv[:2] in (["python", "-c"], ["/opt/venv/bin/python", "-c"])
    cmd = [sys.executable, "-c", argv[2]]

    def probe(address: str) -> int:
        env = {"CERTUS_ADDRESS": address, "PATH": "/usr/bin:/bin"}
        return subprocess.run(cmd, env=env, capture_output=True, timeout=60).returncode

    assert probe(f"127.0.0.1:{sidecar.port}") == 0
    assert probe(f"0.0.0.0:{sidecar.port}") == 0  # a wildcard bind is probed on loopback
    assert probe(f"127.0.0.1:{free_port()}") != 0  # nothing listening
