"""`certus-sidecar token new|hash`: the printed entry loads and authenticates the printed token."""

from __future__ import annotations

import io
import json
import re

import pytest

from certus.sidecar.cli import main
from certus.sidecar.security.tokens import TokenStore


def test_token_hash_matches_sha256sum(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("abc\n"))
    assert main(["token", "hash"]) == 0
    assert capsys.readouterr().out.strip() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_token_hash_needs_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["token", "hash"]) == 2


def test_token_new_prints_a_loadable_entry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "new", "--name", "rag-app", "--workspace", "acme", "--workspace", "beta",
                 "--scope", "workspace:admin"]) == 0
    out, err = capsys.readouterr()
    entry = json.loads(out)
    token = re.search(r"(certus_\S+)", err).group(1)  # type: ignore[union-attr]
    assert token not in out  # stdout (what goes into the file) holds only the digest
    ident = TokenStore.from_data([entry]).authenticate(token)
    assert ident is not None and ident.name == "rag-app" and ident.is_admin("beta")
