"""Tokens file parsing, SHA-256 digests at rest, constant-time lookup, scopes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certus.sidecar.security.tokens import (
    Identity,
    TokensFileError,
    TokenStore,
    hash_token,
    new_token,
    parse_bearer,
)

# FIPS 180-2 test vector: SHA-256("abc")
ABC_SHA256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def entry(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "app",
        "token_sha256": hash_token("tok-app"),
        "workspaces": ["acme"],
        "scopes": ["workspace:read"],
    }
    base.update(kw)
    return base


def test_hash_token_is_sha256_hex_of_utf8() -> None:
    assert hash_token("abc") == ABC_SHA256
    # UTF-8 (c3 a9), as `printf 'é' | sha256sum` prints
    assert hash_token("é") == "4a99557e4033c3539de2eb65472017cad5f9557f7a0625a09f1c3f6e2ba69c4c"


def test_new_tokens_are_random_and_long() -> None:
    a, b = new_token(), new_token()
    assert a != b and a.startswith("certus_") and len(a) >= 40


def test_json_file_authenticates_by_digest(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"tokens": [entry(), entry(name="ops", token_sha256=ABC_SHA256, scopes=["workspace:admin"], workspaces="*")]}))
    store = TokenStore.load(path)
    assert len(store) == 2
    assert store.authenticate("tok-app") == Identity("app", frozenset({"acme"}), frozenset({"workspace:read"}))
    ops = store.authenticate("abc")
    assert ops is not None and ops.name == "ops" and ops.is_admin("anything")
    assert store.authenticate("tok-ap") is None
    assert store.authenticate("") is None
    assert store.authenticate(ABC_SHA256) is None  # the digest itself is not a token


def test_toml_file_and_digest_spellings(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_text(
        "[[tokens]]\n"
        'name = "app"\n'
        f'token_sha256 = "sha256:{ABC_SHA256.upper()}"\n'
        'workspaces = ["acme", "beta"]\n'
        'scopes = ["workspace:read", "workspace:admin"]\n'
    )
    ident = TokenStore.load(path).authenticate("abc")
    assert ident is not None
    assert ident.workspaces == frozenset({"acme", "beta"})
    assert ident.is_admin("beta") and not ident.can_access("gamma")


def test_bare_list_is_accepted() -> None:
    assert len(TokenStore.from_data([entry()])) == 1


def test_repr_never_shows_digests() -> None:
    store = TokenStore.from_data([entry()])
    assert hash_token("tok-app") not in repr(store)
    assert hash_token("tok-app") not in repr(store._entries[0])


@pytest.mark.parametrize(
    "bad,field",
    [
        (entry(token="tok-app"), "tokens[0].token"),
        (entry(token_sha256="abc"), "tokens[0].token_sha256"),
        (entry(token_sha256="g" * 64), "tokens[0].token_sha256"),
        (entry(name=""), "tokens[0].name"),
        (entry(name="has space"), "tokens[0].name"),
        (entry(workspaces=[]), "tokens[0].workspaces"),
        (entry(workspaces=["acme corp"]), "tokens[0].workspaces"),
        (entry(scopes=["workspace:write"]), "tokens[0].scopes"),
        (entry(scopes=[]), "tokens[0].scopes"),
        (entry(extra=1), "tokens[0]: unknown field"),
    ],
)
def test_malformed_entries_name_the_field(bad: dict[str, object], field: str) -> None:
    with pytest.raises(TokensFileError) as exc:
        TokenStore.from_data({"tokens": [bad]})
    assert field in str(exc.value)


def test_plaintext_tokens_are_refused_with_the_fix() -> None:
    with pytest.raises(TokensFileError, match="token hash"):
        TokenStore.from_data({"tokens": [entry(token="tok-app")]})


def test_duplicates_and_empty_files_are_refused() -> None:
    with pytest.raises(TokensFileError, match="names must be unique"):
        TokenStore.from_data([entry(), entry(token_sha256=ABC_SHA256)])
    with pytest.raises(TokensFileError, match="listed twice"):
        TokenStore.from_data([entry(), entry(name="other")])
    with pytest.raises(TokensFileError, match="no tokens"):
        TokenStore.from_data({"tokens": []})
    with pytest.raises(TokensFileError, match="list under 'tokens'"):
        TokenStore.from_data({"token": []})


def test_unreadable_or_invalid_files_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match="auth.tokens_file: cannot read"):
        TokenStore.load(tmp_path / "missing.json")
    bad = tmp_path / "tokens.json"
    bad.write_text("{not json")
    with pytest.raises(TokensFileError, match="not valid JSON"):
        TokenStore.load(bad)
    bad_toml = tmp_path / "tokens.toml"
    bad_toml.write_text("[[tokens]\n")
    with pytest.raises(TokensFileError, match="not valid TOML"):
        TokenStore.load(bad_toml)


def test_identity_scopes() -> None:
    reader = Identity("r", frozenset({"acme"}), frozenset({"workspace:read"}))
    admin = Identity("a", frozenset({"*"}), frozenset({"workspace:admin"}))
    assert reader.can_read("acme") and not reader.is_admin("acme")
    assert not reader.can_read("beta")
    assert admin.can_read("beta") and admin.is_admin("beta")


@pytest.mark.parametrize(
    "values,token",
    [(["Bearer abc"], "abc"), (["bearer abc"], "abc"), (["  Bearer   abc  "], "abc")],
)
def test_parse_bearer(values: list[str], token: str) -> None:
    assert parse_bearer(values) == token


@pytest.mark.parametrize("values", [[], ["Basic abc"], ["Bearer"], ["Bearer "], ["abc"], ["Bearer a", "Bearer a"]])
def test_parse_bearer_refuses(values: list[str]) -> None:
    with pytest.raises(ValueError):
        parse_bearer(values)


def test_entry_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps([entry(scopes=["admin"])]))
    with pytest.raises(TokensFileError) as exc:
        TokenStore.load(path)
    assert str(exc.value).startswith(f"auth.tokens_file {path}: tokens[0].scopes: unknown scope 'admin'")
