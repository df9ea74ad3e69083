"""Configuration loading: sources in order, and a bad setting named by where it came from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from certus.sidecar import config as config_mod
from certus.sidecar.config import ConfigError


def test_later_sources_win(tmp_path: Path) -> None:
    toml = tmp_path / "certus.toml"
    toml.write_text("[batcher]\nmax_batch_size = 8\nmax_wait_ms = 1.5\n[model]\narena_shrink_tokens = 0\n")
    cfg = config_mod.load(toml, env={"CERTUS_MAX_BATCH_SIZE": "16"}, overrides={"batcher": {"max_queue": 7}})
    assert (cfg.batcher.max_batch_size, cfg.batcher.max_wait_ms, cfg.batcher.max_queue) == (16, 1.5, 7)
    assert cfg.model.arena_shrink_tokens == 0
    assert config_mod.load(env={"CERTUS_ARENA_SHRINK_TOKENS": "2048"}).model.arena_shrink_tokens == 2048


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CERTUS_MAX_BATCH_SIZE": "abc"}, "CERTUS_MAX_BATCH_SIZE (batcher.max_batch_size): must be an integer, got 'abc'"),
        ({"CERTUS_MAX_BATCH_SIZE": "2.5"}, "CERTUS_MAX_BATCH_SIZE (batcher.max_batch_size): must be an integer, got '2.5'"),
        ({"CERTUS_MAX_WAIT_MS": "soon"}, "CERTUS_MAX_WAIT_MS (batcher.max_wait_ms): must be a number, got 'soon'"),
        ({"CERTUS_ARENA_SHRINK_TOKENS": ""}, "CERTUS_ARENA_SHRINK_TOKENS (model.arena_shrink_tokens): must be an integer, got ''"),
    ],
)
def test_a_bad_environment_value_names_the_variable_and_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_mod.load(env=env)
    assert str(err.value) == message


def test_a_bad_file_names_the_file_and_field(tmp_path: Path) -> None:
    toml = tmp_path / "certus.toml"
    toml.write_text('[batcher]\nmax_batch_size = "many"\n')
    with pytest.raises(ConfigError, match=r"certus\.toml \(batcher\.max_batch_size\): must be an integer, got 'many'"):
        config_mod.load(toml, env={})
    toml.write_text("[batcher]\nmax_batch_sise = 8\n")
    with pytest.raises(ConfigError, match=r"unknown config field batcher\.max_batch_sise"):
        config_mod.load(toml, env={})
    toml.write_text("[batcher\n")
    with pytest.raises(ConfigError, match=r"config file .*certus\.toml: "):
        config_mod.load(toml, env={})
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml: .*No such file"):
        config_mod.load(tmp_path / "missing.toml", env={})


@pytest.mark.parametrize(
    ("section", "name", "raw", "message"),
    [
        ("batcher", "max_batch_size", [8], "must be an integer, got [8]"),
        ("batcher", "max_batch_size", True, "must be an integer, got True"),
        ("batcher", "max_wait_ms", "fast", "must be a number, got 'fast'"),
        ("guardrails", "pii_ner", "ture", "must be a boolean"),
        ("guardrails", "pii_ner_model", "bert", "must be one of minilm, spacy, got 'bert'"),
        ("server", "address", 50051, "must be a string, got 50051"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused(tmp_path: Path, section: str, name: str, raw: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"override ({section}.{name}): {message}")):
        config_mod.load(env={}, overrides={section: {name: raw}})


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("Yes", True), ("on", True), ("0", False), ("off", False), ("", False)])
def test_booleans_from_the_environment(raw: str, value: bool) -> None:
    assert config_mod.load(env={"CERTUS_PII_NER": raw}).guardrails.pii_ner is value


def test_the_pii_ner_model_from_the_environment() -> None:
    assert config_mod.load(env={}).guardrails.pii_ner_model == "minilm"
    assert config_mod.load(env={"CERTUS_PII_NER_MODEL": "spacy"}).guardrails.pii_ner_model == "spacy"
    with pytest.raises(ConfigError, match=re.escape("CERTUS_PII_NER_MODEL (guardrails.pii_ner_model): must be one of minilm, spacy")):
        config_mod.load(env={"CERTUS_PII_NER_MODEL": "large"})
