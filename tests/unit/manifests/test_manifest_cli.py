"""``certus-sidecar manifest keygen|sign|verify|validate`` with real Ed25519 keys and files."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from certus.sidecar import manifest_cli
from certus.sidecar.config import ManifestConfig
from certus.sidecar.manifests import ManifestStore
from certus.sidecar.signing import MANIFEST_PAYLOAD_TYPE, canonical_json, pae


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="certus-sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    manifest_cli.register(sub)
    args = parser.parse_args(["manifest", *map(str, argv)])
    return int(args.func(args))


@pytest.fixture
def signer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    key = tmp_path / "keys" / "m.key"
    assert run("keygen", key) == 0
    # the last line: a log line of another test's background thread may precede it on stdout
    out = capsys.readouterr().out.splitlines()[-1]
    assert out.startswith("ed25519:") and f"-> {key}" in out
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    return key, Path(f"{key}.pub")


def test_keygen_refuses_to_overwrite(signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run("keygen", signer[0]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_sign_verify_roundtrip_and_store_accepts_it(
    tmp_path: Path, signer: tuple[Path, Path], write: Any, make_versioned: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    key, pub = signer
    mdir = tmp_path / "manifests"
    src = write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=1234))
    assert run("sign", src, "--key", key) == 0
    env_path = mdir / "acme" / "2025-01.json.dsse"
    assert capsys.readouterr().out.startswith(f"signed certus://manifests/acme/2025-01 with ed25519:")
    assert run("verify", env_path, "--key", pub) == 0
    assert capsys.readouterr().out.startswith("OK certus://manifests/acme/2025-01 signed by ed25519:")

    # the envelope is plain DSSE: an independent Ed25519 implementation verifies it
    env = json.loads(env_path.read_text())
    assert env["payloadType"] == MANIFEST_PAYLOAD_TYPE
    payload = base64.b64decode(env["payload"])
    assert payload == canonical_json(make_versioned("acme", "2025-01", timeout_ms=1234))
    Ed25519PublicKey.from_public_bytes(base64.b64decode(pub.read_text())).verify(
        base64.b64decode(env["signatures"][0]["sig"]), pae(MANIFEST_PAYLOAD_TYPE, payload)
    )

    s = ManifestStore(ManifestConfig(manifest_dir=mdir, trusted_keys=(pub,), reload_interval_s=0))
    m = s.resolve("acme", "")
    assert m.timeout_ms == 1234 and m.signer_key_id == env["signatures"][0]["keyid"] and s.health_details() == {}


def test_sign_toml_with_out(tmp_path: Path, signer: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "draft.toml"
    src.write_text(
        'manifest_id = "manifest_acme_2025_02"\nmanifest_uri = "certus://manifests/acme/2025-02"\n'
        'workspace_id = "acme"\nversion = "2025-02"\nsigned_by = "ops"\ncreated_at = 2025-02-01T00:00:00Z\n'
    )
    out = tmp_path / "acme" / "2025-02.json.dsse"
    out.parent.mkdir()
    assert run("sign", src, "--key", signer[0], "--out", out) == 0
    assert run("verify", out, "--key", signer[1]) == 0
    payload = json.loads(base64.b64decode(json.loads(out.read_text())["payload"]))
    assert payload["created_at"] == "2025-02-01T00:00:00+00:00"


def test_verify_rejects_wrong_key_and_tampering(
    tmp_path: Path, signer: tuple[Path, Path], write: Any, make_versioned: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    assert run("sign", src, "--key", signer[0]) == 0
    env_path = tmp_path / "acme" / "2025-01.json.dsse"
    other = tmp_path / "other.key"
    assert run("keygen", other) == 0
    capsys.readouterr()
    assert run("verify", env_path, "--key", f"{other}.pub") == 1
    assert "envelope.signatures: no signature by a trusted key" in capsys.readouterr().err

    env = json.loads(env_path.read_text())
    env["payload"] = base64.b64encode(canonical_json(make_versioned("acme", "2025-01", default_mode="disabled"))).decode()
    env_path.write_text(json.dumps(env))
    assert run("verify", env_path, "--key", signer[1]) == 1
    assert "envelope.signatures: bad signature for key ed25519:" in capsys.readouterr().err


def test_sign_refuses_an_invalid_manifest(
    tmp_path: Path, signer: tuple[Path, Path], write: Any, make_versioned: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write(tmp_path / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=5))
    assert run("sign", src, "--key", signer[0]) == 1
    err = capsys.readouterr().err
    assert f"{src}: timeout_ms: must be between 100 and 30000, got 5" in err
    assert "refusing to sign" in err
    assert not (tmp_path / "acme" / "2025-01.json.dsse").exists()


def test_validate(tmp_path: Path, write: Any, make_versioned: Any, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    assert run("validate", good) == 0
    assert capsys.readouterr().out.startswith("OK certus://manifests/acme/2025-01 sha256:")

    bad = make_versioned("acme", "2025-02", bogus=1)
    bad["version"] = "2025-13"
    bad_path = write(tmp_path / "acme" / "2025-02.json", bad)
    assert run("validate", bad_path) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{bad_path}: bogus: unknown field",
        f"{bad_path}: version: month must be 01-12, got 13",
    ]
    misplaced = write(tmp_path / "globex" / "2025-01.json", make_versioned("acme", "2025-01"))
    assert run("validate", misplaced) == 1
    assert "workspace_id: is 'acme' but the file lies in the directory of workspace 'globex'" in capsys.readouterr().err
    draft = write(tmp_path / "draft.json", make_versioned("acme", "2025-01"))  # not a store name: content only
    assert run("validate", draft) == 0
    capsys.readouterr()
    assert run("validate", tmp_path / "x.yaml") == 2
    assert run("validate", tmp_path / "missing.json") == 2
    assert "cannot read" in capsys.readouterr().err
