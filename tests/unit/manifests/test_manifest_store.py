"""Manifest store: layout <-> uri, latest, resolve errors, hot reload, last good, signatures."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import structlog

from certus.sidecar.config import ManifestConfig
from certus.sidecar.domain import Mode
from certus.sidecar.errors import InvalidArgument, NotFound
from certus.sidecar.manifests import ManifestStore
from certus.sidecar.signing import MANIFEST_PAYLOAD_TYPE, SigningKey, canonical_json, sign_envelope

Write = Callable[[Path, Any], Path]


def store_for(tmp_path: Path, **kw: Any) -> ManifestStore:
    kw.setdefault("reload_interval_s", 0.0)
    return ManifestStore(ManifestConfig(manifest_dir=tmp_path / "manifests", **kw))


def signed(key: SigningKey, document: dict[str, Any]) -> bytes:
    return sign_envelope(key, MANIFEST_PAYLOAD_TYPE, canonical_json(document)).to_json()


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = tmp_path / "manifests"
    d.mkdir()
    return d


def test_no_directory_serves_the_embedded_default(tmp_path: Path) -> None:
    s = store_for(tmp_path)
    d = s.embedded_default
    assert s.resolve("acme", "") is d
    assert s.resolve("acme", "certus://manifests/acme/latest") is d
    assert s.resolve("default", "certus://manifests/default/latest") is d
    assert s.resolve("default", "certus://manifests/default/2025-01") is d
    assert s.health_details() == {} and s.uris() == []
    with pytest.raises(NotFound, match="certus://manifests/acme/2025-01 not found"):
        s.resolve("acme", "certus://manifests/acme/2025-01")


def test_layout_versions_and_latest(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "acme" / "2024-12.json", make_versioned("acme", "2024-12", timeout_ms=1000))
    write(mdir / "acme" / "2025-02.json", make_versioned("acme", "2025-02", timeout_ms=3000))
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=2000))
    write(mdir / "globex" / "2023-07.json", make_versioned("globex", "2023-07"))
    s = store_for(mdir.parent)
    assert s.uris() == [
        "certus://manifests/acme/2024-12",
        "certus://manifests/acme/2025-01",
        "certus://manifests/acme/2025-02",
        "certus://manifests/globex/2023-07",
    ]
    assert s.resolve("acme", "").version == "2025-02"
    assert s.resolve("acme", "certus://manifests/acme/latest").timeout_ms == 3000
    assert s.resolve("acme", "certus://manifests/acme/2024-12").timeout_ms == 1000
    m = s.resolve("acme", "certus://manifests/acme/2025-01")
    assert (m.manifest_uri, m.source) == ("certus://manifests/acme/2025-01", "acme/2025-01.json")
    assert s.resolve("globex", "").workspace_id == "globex"
    assert s.resolve("initech", "") is s.embedded_default  # a workspace with no manifest
    with pytest.raises(NotFound):
        s.resolve("acme", "certus://manifests/acme/2025-03")


def test_uri_of_another_workspace_is_invalid_argument(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    s = store_for(mdir.parent)
    for uri in ("certus://manifests/acme/2025-01", "certus://manifests/acme/latest", "certus://manifests/default/latest"):
        with pytest.raises(InvalidArgument) as ei:
            s.resolve("globex", uri)
        assert [v.field for v in ei.value.violations] == ["manifest_uri"]
        assert "request is for workspace_id 'globex'" in ei.value.violations[0].description
    with pytest.raises(InvalidArgument) as ei:
        s.resolve("acme", "certus://manifests/acme")
    assert ei.value.violations[0].field == "manifest_uri"


def test_default_workspace_directory_overrides_the_embedded_default(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "default" / "2025-06.json", make_versioned("default", "2025-06", default_mode="enforce"))
    s = store_for(mdir.parent)
    assert s.resolve("acme", "").manifest_uri == "certus://manifests/default/2025-06"
    assert s.resolve("acme", "").default_mode is Mode.ENFORCE
    assert s.resolve("default", "certus://manifests/default/latest").version == "2025-06"
    assert s.resolve("default", "certus://manifests/default/2025-01") is s.embedded_default


def test_json_toml_and_signed_formats(mdir: Path, write: Write, make_versioned: Any, keypair: Any) -> None:
    key = keypair[0]
    toml = (
        'manifest_id = "manifest_acme_2025_03"\nmanifest_uri = "certus://manifests/acme/2025-03"\n'
        'workspace_id = "acme"\nversion = "2025-03"\nsigned_by = "ops"\ntimeout_ms = 900\n'
    )
    write(mdir / "acme" / "2025-03.toml", toml)
    write(mdir / "acme" / "2025-04.json.dsse", signed(key, make_versioned("acme", "2025-04", timeout_ms=800)))
    s = store_for(mdir.parent)
    assert s.resolve("acme", "certus://manifests/acme/2025-03").timeout_ms == 900
    m = s.resolve("acme", "")
    assert (m.version, m.timeout_ms, m.signer_key_id) == ("2025-04", 800, None)  # no trusted keys: not checked


def test_files_that_are_not_manifests_are_ignored_or_reported(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    write(mdir / "acme" / "README.md", "notes")
    write(mdir / "acme" / ".2025-01.json.swp", "x")
    write(mdir / "..data" / "2025-01.json", "{}")  # Kubernetes ConfigMap internals
    write(mdir / "acme" / "draft.json", make_versioned("acme", "2025-05"))
    write(mdir / "acme" / "2025-13.json", make_versioned("acme", "2025-05"))
    write(mdir / "bad ws" / "2025-01.json", make_versioned("acme", "2025-01"))
    write(mdir / "acme.json", make_versioned("acme", "2025-01"))
    write(mdir / "globex" / "2025-01.json", make_versioned("acme", "2025-01"))  # wrong directory
    s = store_for(mdir.parent)
    assert s.uris() == ["certus://manifests/acme/2025-01"]
    h = s.health_details()
    assert h == {
        "acme/draft.json": "acme/draft.json: <file>: file name must be <YYYY-MM>.json, .toml or .json.dsse",
        "acme/2025-13.json": "acme/2025-13.json: <file>: file name must be <YYYY-MM>.json, .toml or .json.dsse",
        "bad ws/2025-01.json": "bad ws/2025-01.json: <file>: directory name is not a valid workspace_id (^[a-zA-Z0-9_-]{1,255}$)",
        "acme.json": "acme.json: <file>: manifests live in <workspace>/<version>.json|.toml|.json.dsse",
        "globex/2025-01.json": "globex/2025-01.json: workspace_id: is 'acme' but the file lies in the directory of "
        "workspace 'globex'",
    }


def test_two_plain_files_for_one_version_are_ambiguous(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    write(mdir / "acme" / "2025-01.toml", 'manifest_id = "manifest_x"')
    s = store_for(mdir.parent)
    assert s.uris() == []
    assert s.health_details() == {
        "acme/2025-01.json": "acme/2025-01.json: <file>: ambiguous: 2025-01.json, 2025-01.toml define the same version; keep one"
    }


def test_hot_reload_change_new_delete(mdir: Path, write: Write, make_versioned: Any) -> None:
    path = write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=1000))
    s = store_for(mdir.parent)
    first = s.resolve("acme", "")
    assert first.timeout_ms == 1000
    s.reload()
    assert s.resolve("acme", "") is first  # unchanged content: the same object
    write(path, make_versioned("acme", "2025-01", timeout_ms=1500))
    s.reload()
    assert s.resolve("acme", "").timeout_ms == 1500
    write(mdir / "acme" / "2025-02.json", make_versioned("acme", "2025-02", timeout_ms=2500))
    s.reload()
    assert s.resolve("acme", "").timeout_ms == 2500
    os.unlink(mdir / "acme" / "2025-02.json")
    s.reload()
    assert s.resolve("acme", "").timeout_ms == 1500
    with pytest.raises(NotFound):
        s.resolve("acme", "certus://manifests/acme/2025-02")
    shutil.rmtree(mdir / "acme")
    s.reload()
    assert s.resolve("acme", "") is s.embedded_default


def test_in_place_edit_with_same_size_and_timestamp_is_seen(mdir: Path, write: Write, make_versioned: Any) -> None:
    path = write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=1000))
    st = path.stat()
    s = store_for(mdir.parent)
    with path.open("r+b") as f:  # same inode, same size
        f.write(path.read_bytes().replace(b'"timeout_ms": 1000', b'"timeout_ms": 1001'))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime (coarse clocks)
    s.reload()
    assert s.resolve("acme", "").timeout_ms == 1001


def test_broken_edit_keeps_last_good_and_reports_it(mdir: Path, write: Write, make_versioned: Any) -> None:
    path = write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=1000))
    s = store_for(mdir.parent)
    good = s.resolve("acme", "certus://manifests/acme/2025-01")
    bad = make_versioned("acme", "2025-01", timeout_ms=1000)
    bad["thresholds"]["faithfulness"]["max_score"] = 0.5
    with structlog.testing.capture_logs() as logs:
        write(path, bad)
        s.reload()
        s.reload()  # the same broken file is reported once, not on every poll
    assert s.resolve("acme", "certus://manifests/acme/2025-01") is good
    assert s.resolve("acme", "") is good
    msg = "acme/2025-01.json: thresholds.faithfulness.max_score: must be >= min_score (0.5 < 0.7)"
    assert s.health_details() == {"acme/2025-01.json": msg}
    warnings = [e for e in logs if e["event"] == "manifest_invalid"]
    assert warnings == [{"event": "manifest_invalid", "file": "acme/2025-01.json", "error": msg, "log_level": "warning"}]
    write(path, "{ not json")
    s.reload()
    assert s.resolve("acme", "") is good
    assert s.health_details()["acme/2025-01.json"].startswith("acme/2025-01.json: <file>: invalid JSON")
    write(path, make_versioned("acme", "2025-01", timeout_ms=1200))
    s.reload()
    assert s.resolve("acme", "").timeout_ms == 1200 and s.health_details() == {}


def test_a_new_broken_file_never_loads_and_latest_stays_on_the_good_one(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    write(mdir / "acme" / "2025-02.json", make_versioned("acme", "2025-02", timeout_ms=50))
    s = store_for(mdir.parent)
    assert s.resolve("acme", "").version == "2025-01"
    assert s.health_details() == {"acme/2025-02.json": "acme/2025-02.json: timeout_ms: must be between 100 and 30000, got 50"}
    with pytest.raises(NotFound):
        s.resolve("acme", "certus://manifests/acme/2025-02")


def test_resolve_does_no_io(mdir: Path, write: Write, make_versioned: Any) -> None:
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01"))
    s = store_for(mdir.parent)
    shutil.rmtree(mdir)
    assert s.resolve("acme", "certus://manifests/acme/2025-01").workspace_id == "acme"  # until the next reload


def test_config_defaults_apply_and_are_checked(tmp_path: Path) -> None:
    s = store_for(tmp_path, default_mode="enforce", default_timeout_ms=700)
    assert s.default.default_mode is Mode.ENFORCE and s.default.timeout_ms == 700
    with pytest.raises(InvalidArgument) as ei:
        store_for(tmp_path, default_mode="loud", default_timeout_ms=50)
    assert [v.field for v in ei.value.violations] == ["manifests.default_mode", "manifests.default_timeout_ms"]


# -- signatures --------------------------------------------------------------------------------


def test_trusted_keys_refuse_unsigned_and_wrongly_signed(mdir: Path, write: Write, make_versioned: Any, keypair: Any) -> None:
    key, _, pub = keypair
    other = SigningKey.generate()
    write(mdir / "acme" / "2025-01.json.dsse", signed(key, make_versioned("acme", "2025-01")))
    write(mdir / "acme" / "2025-02.json", make_versioned("acme", "2025-02"))
    write(mdir / "acme" / "2025-03.json.dsse", signed(other, make_versioned("acme", "2025-03")))
    env = json.loads(signed(key, make_versioned("acme", "2025-04")))
    env["payload"] = __import__("base64").b64encode(
        canonical_json(make_versioned("acme", "2025-04", default_mode="disabled"))
    ).decode()
    write(mdir / "acme" / "2025-04.json.dsse", json.dumps(env))
    s = store_for(mdir.parent, trusted_keys=(pub,))
    assert s.uris() == ["certus://manifests/acme/2025-01"]
    m = s.resolve("acme", "")
    assert (m.version, m.signer_key_id) == ("2025-01", key.key_id)
    h = s.health_details()
    assert h["acme/2025-02.json"] == (
        "acme/2025-02.json: <file>: unsigned manifest refused: trusted manifest keys are configured "
        "(sign it: certus-sidecar manifest sign)"
    )
    assert h["acme/2025-03.json.dsse"] == (
        f"acme/2025-03.json.dsse: envelope.signatures: no signature by a trusted key (keyids: {other.key_id})"
    )
    assert h["acme/2025-04.json.dsse"] == f"acme/2025-04.json.dsse: envelope.signatures: bad signature for key {key.key_id}"
    assert len(h) == 3


def test_signed_envelope_wins_over_its_plain_source_and_keeps_last_good(
    mdir: Path, write: Write, make_versioned: Any, keypair: Any
) -> None:
    key, _, pub = keypair
    write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=111))
    env_path = write(mdir / "acme" / "2025-01.json.dsse", signed(key, make_versioned("acme", "2025-01", timeout_ms=222)))
    s = store_for(mdir.parent, trusted_keys=(pub,))
    assert s.resolve("acme", "").timeout_ms == 222 and s.health_details() == {}
    write(env_path, signed(SigningKey.generate(), make_versioned("acme", "2025-01", timeout_ms=333)))
    s.reload()
    assert s.resolve("acme", "").timeout_ms == 222  # last good kept
    assert list(s.health_details()) == ["acme/2025-01.json.dsse"]


def test_signed_manifest_moved_to_another_workspace_is_refused(
    mdir: Path, write: Write, make_versioned: Any, keypair: Any
) -> None:
    key, _, pub = keypair
    write(mdir / "globex" / "2025-01.json.dsse", signed(key, make_versioned("acme", "2025-01")))
    s = store_for(mdir.parent, trusted_keys=(pub,))
    assert s.resolve("globex", "") is s.embedded_default
    assert "globex/2025-01.json.dsse: workspace_id: is 'acme'" in s.health_details()["globex/2025-01.json.dsse"]


def test_envelope_with_wrong_payload_type(mdir: Path, write: Write, make_versioned: Any, keypair: Any) -> None:
    key, _, pub = keypair
    env = sign_envelope(key, "application/vnd.certus.decision+json", canonical_json(make_versioned("acme", "2025-01")))
    write(mdir / "acme" / "2025-01.json.dsse", env.to_json())
    s = store_for(mdir.parent, trusted_keys=(pub,))
    assert s.health_details() == {
        "acme/2025-01.json.dsse": "acme/2025-01.json.dsse: envelope.payloadType: is "
        "'application/vnd.certus.decision+json'; expected 'application/vnd.certus.manifest+json'"
    }


def test_bad_trusted_key_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("not base64!")
    with pytest.raises(InvalidArgument) as ei:
        store_for(tmp_path, trusted_keys=(bad, tmp_path / "missing.pub"))
    assert [v.field for v in ei.value.violations] == ["manifests.trusted_keys[0]", "manifests.trusted_keys[1]"]


# -- watcher -----------------------------------------------------------------------------------


def _wait_for(cond: Callable[[], bool], limit_s: float = 20.0) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def test_watcher_picks_up_changes_without_restart(mdir: Path, write: Write, make_versioned: Any) -> None:
    path = write(mdir / "acme" / "2025-01.json", make_versioned("acme", "2025-01", timeout_ms=1000))
    s = store_for(mdir.parent, reload_interval_s=0.02)
    with s:
        write(path, make_versioned("acme", "2025-01", timeout_ms=4000))
        assert _wait_for(lambda: s.resolve("acme", "").timeout_ms == 4000)
        write(path, b"\x00garbage")
        assert _wait_for(lambda: "acme/2025-01.json" in s.health_details())
        assert s.resolve("acme", "").timeout_ms == 4000
    assert s._thread is None


def test_concurrent_resolve_during_reloads_always_sees_a_whole_manifest(
    mdir: Path, write: Write, make_versioned: Any
) -> None:
    path = mdir / "acme" / "2025-01.json"
    write(path, make_versioned("acme", "2025-01", timeout_ms=1000))
    s = store_for(mdir.parent)
    stop = threading.Event()
    seen: set[int] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                m = s.resolve("acme", "certus://manifests/acme/2025-01")
                seen.add(m.timeout_ms)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(40):
        write(path, make_versioned("acme", "2025-01", timeout_ms=1000 + (i % 2)) if i % 5 else b"{broken")
        s.reload()
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert seen <= {1000, 1001}
