"""The product as a user runs it: installed entry points, from outside the repository, empty HOME.

The suite itself runs from the repository root, where the design card's folders (``sidecar/``,
``kernels/``, ``models/``) sit on ``sys.path``. A green suite once hid a server that crashed when
started by its console script, because a dependency's top-level ``kernels`` shadowed ours in
site-packages. These tests close that gap: every command here is the installed ``certus-sidecar``
run with its working directory outside the repository, no ``PYTHONPATH`` and a throwaway ``HOME``,
and the import names are checked to be ours alone.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certus.sidecar.protos import pb, pb_grpc
from tests.conftest import ROOT, cli_argv, cli_env, shared_data

OUR_DISTRIBUTIONS = {"certus-evaluate", "certus-client"}
FOLDERS = ("sidecar", "kernels", "models")  # the design card's folders: import names certus.<folder>


def _fresh_env(home: Path, model_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A user's environment: empty HOME, nothing of ours configured but the already exported model
    (so the test does not pay a second export; the toolchain is tested in tests/unit/models)."""
    env = cli_env({"HOME": str(home), "CERTUS_MODEL_DIR": str(model_dir), "CERTUS_PII_NER": "false"})
    env.pop("CERTUS_HOME", None)
    env.update(extra or {})
    return env


def _serve(home: Path, model_dir: Path, extra: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """``certus-sidecar serve`` (installed entry point, cwd outside the repository); (proc, target)."""
    home.mkdir(parents=True, exist_ok=True)
    env = _fresh_env(home, model_dir, {"CERTUS_ADDRESS": "127.0.0.1:0", **(extra or {})})
    stderr = home.parent / "serve.stderr"  # a file, so the server can never block on a full pipe
    with stderr.open("w") as err:
        proc = subprocess.Popen(cli_argv("serve"), env=env, cwd=home, stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"certus-sidecar serve exited with {proc.wait()}: {stderr.read_text()[-3000:]}")
        if "listening on" in line:
            return proc, line.strip().rsplit(" ", 1)[1]
    proc.kill()
    raise AssertionError("certus-sidecar serve did not start in time")


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def _wait_serving(target: str) -> None:
    with grpc.insecure_channel(target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        deadline = time.monotonic() + 60
        while True:
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{target} never reported SERVING")
            time.sleep(0.2)


def test_installed_sidecar_serves_evaluates_and_verifies_from_outside_the_repository(
    tmp_path: Path, model_dir: Path
) -> None:
    home = tmp_path / "home"
    proc, target = _serve(home, model_dir)
    try:
        _wait_serving(target)
        with grpc.insecure_channel(target) as ch:
            resp = pb_grpc.EvaluatorStub(ch).Evaluate(
                pb.EvaluateRequest(
                    workspace_id="acme",
                    query="What is the capital of France?",
                    response="Paris is the capital of France.",
                    context=["Paris is the capital and most populous city of France."],
                ),
                timeout=30,
            )
        assert resp.evidence_id.startswith("sha256:") and not resp.skipped
        assert {m.name for m in resp.metrics} >= {"faithfulness", "confidence"}
    finally:
        assert _stop(proc) == 0
    # every default path landed in the empty HOME, none in the repository
    evidence, pub = home / ".certus" / "evidence", home / ".certus" / "keys" / "signing.key.pub"
    assert evidence.is_dir() and pub.is_file()
    done = subprocess.run(
        cli_argv("verify", evidence, "--key", pub, "--json"),
        env=_fresh_env(home, model_dir), cwd="/", capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["records"] == 1


def test_installed_calibrate_runs_from_outside_the_repository(tmp_path: Path, model_dir: Path) -> None:
    rows = []
    with shared_data("halueval", "qa_dev.jsonl").open() as f:
        for line, _ in zip(f, range(12)):
            r = json.loads(line)
            rows.append({"query": r["question"], "context": r["knowledge"], "answer": r["right_answer"], "label": 1})
            rows.append({"query": r["question"], "context": r["knowledge"], "answer": r["hallucinated_answer"], "label": 0})
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run(
        cli_argv("calibrate", labelled, "--metric", "faithfulness", "--roc-png", "", "--no-progress"),
        env=_fresh_env(tmp_path / "home", model_dir), cwd="/tmp", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ROC AUC:" in done.stdout and "recommended threshold:" in done.stdout


def test_every_subcommand_answers_help_from_outside_the_repository(tmp_path: Path) -> None:
    from certus.sidecar.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    commands = sorted(sub.choices)  # type: ignore[attr-defined]
    assert {"serve", "verify", "calibrate", "evaluate", "models", "report"} <= set(commands)
    for command in [None, *commands]:
        args = ["--help"] if command is None else [command, "--help"]
        done = subprocess.run(cli_argv(*args), env=cli_env({"HOME": str(tmp_path)}), cwd="/", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "usage: certus-sidecar" in done.stdout, (command, done.stderr[-2000:])


# -- import names -----------------------------------------------------------------------------------


def test_no_other_distribution_provides_our_import_names() -> None:
    provided = metadata.packages_distributions()
    assert set(provided.get("certus", [])) <= OUR_DISTRIBUTIONS, provided.get("certus")
    for name in FOLDERS:  # the folders' bare names belong to nobody here (HF's `kernels` once did)
        assert name not in provided, f"{name} is provided by {provided[name]}"
    for dist in metadata.distributions():
        if dist.metadata["Name"] in OUR_DISTRIBUTIONS:
            continue
        top = (dist.read_text("top_level.txt") or "").split()
        assert "certus" not in top and not set(FOLDERS) & set(top), (dist.metadata["Name"], top)


_LAYOUT_PROBE = """
import importlib.util, json, sys
names = json.loads(sys.argv[1])
out = {"bare": {n: importlib.util.find_spec(n) is not None for n in names["bare"]}, "modules": {}}
for name in names["modules"]:
    spec = importlib.util.find_spec(name)
    out["modules"][name] = spec.origin if spec else None
print(json.dumps(out))
"""


def _our_modules() -> dict[str, Path]:
    """Every module of ours, by import name, with the file it must resolve to."""
    roots = {f"certus.{folder}": ROOT / folder for folder in FOLDERS}
    roots["certus.client"] = ROOT / "clients" / "python" / "src" / "certus" / "client"
    roots["certus.evaluate"] = ROOT / "clients" / "python" / "src" / "certus" / "evaluate"  # generated
    out: dict[str, Path] = {}
    for package, folder in roots.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts or path.name == "__main__.py":
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            rel = rel[:-1] if rel[-1] == "__init__" else rel
            out[".".join((package, *rel))] = path
    return out


def _probe_layout(env_extra: dict[str, str] | None = None) -> tuple[dict[str, bool], dict[str, str]]:
    """(bare-name importable?, {module: wrong origin}) from a fresh ``python -P`` run at ``/``."""
    expected = _our_modules()
    names = json.dumps({"bare": FOLDERS, "modules": sorted(expected)})
    done = subprocess.run(
        [sys.executable, "-P", "-c", _LAYOUT_PROBE, names], env=cli_env(env_extra), cwd="/", capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    wrong = {m: o for m, o in probe["modules"].items() if o is None or Path(o).resolve() != expected[m].resolve()}
    return probe["bare"], wrong


def test_every_certus_module_resolves_inside_this_repository() -> None:
    # -P: no script directory or cwd on sys.path; run from / as an installed program would be
    assert {"certus.sidecar.cli", "certus.kernels.grounding", "certus.models.encoder", "certus.evaluate.v1.evaluate_pb2"} <= set(_our_modules())
    bare, wrong = _probe_layout()
    assert bare == {n: False for n in FOLDERS}
    assert not wrong, wrong


def test_a_colliding_package_fails_both_the_layout_check_and_the_installed_start(tmp_path: Path, model_dir: Path) -> None:
    """Today's breakage, replayed under the new names: another distribution ships a top-level package
    that holds one of our module names (as Hugging Face's ``kernels`` did). Both guards above catch it:
    the layout probe names the foreign module, and the installed server fails to start."""
    shadow = tmp_path / "site"
    (shadow / "certus" / "kernels").mkdir(parents=True)
    (shadow / "certus" / "__init__.py").write_text("# a foreign regular package named like our namespace\n")
    (shadow / "certus" / "kernels" / "__init__.py").write_text("class CUDAProperties: ...\n")
    _, wrong = _probe_layout({"PYTHONPATH": str(shadow)})
    assert wrong.get("certus.kernels") == str(shadow / "certus" / "kernels" / "__init__.py")
    with pytest.raises(AssertionError, match=r"(?s)exited with 1.*module 'certus\.kernels' has no attribute"):
        _serve(tmp_path / "home", model_dir, {"PYTHONPATH": str(shadow)})
