"""Reading trace files: field aliases, unscorable rows with reasons, limits named, bad lines named."""

from __future__ import annotations

from pathlib import Path

import pytest

from certus.sidecar.toolkit.traces import TraceFileError, read_items
from tests.unit.toolkit.conftest import write_jsonl


def test_fields_and_aliases(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"query": "q", "context": ["a", "b"], "answer": "x", "timestamp": "2025-03-01T10:00:00Z", "trace_id": "t1"},
            {"question": "q2", "contexts": "one chunk", "response": "y", "timestamp": 1740823200},
            {"input": "q3", "retrieved_context": [{"bad": 1}], "output": "z"},
            {"context": ["c"], "answer": "no query"},
        ],
    )
    items = list(read_items(p))
    a, b, c, d = items
    assert a.inp is not None and a.inp.context == ("a", "b") and a.inp.response == "x" and a.trace_id == "t1"
    assert a.timestamp == "2025-03-01T10:00:00.000000Z"
    assert b.inp is not None and b.inp.query == "q2" and b.inp.context == ("one chunk",)
    assert b.timestamp == "2025-03-01T10:00:00.000000Z" and b.trace_id == "line-2"
    assert c.inp is None and c.skip_reason == "invalid" and c.problems == ("context[0]: must be a string, got dict",)
    assert d.inp is not None and not d.has_query and d.inp.query == ""


def test_unscorable_rows_have_reasons(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"query": "q", "context": ["a"], "answer": None, "error": "ValueError: boom"},
            {"query": "q", "context": ["a"]},
            {"query": "q", "answer": "x"},
            {"query": "q", "answer": "x", "context": ["   "]},
        ],
    )
    assert [it.skip_reason for it in read_items(p)] == ["error", "no_answer", "no_context", "no_context"]


def test_limits_are_the_servers_and_name_the_field(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {"query": "q" * 10_001, "context": ["a"], "answer": "x"},
            {"query": "q", "context": ["a"] * 51, "answer": "x"},
            {"query": "q", "context": ["a", "b" * 10_001], "answer": "x"},
            {"query": "q", "context": ["a"], "answer": "x" * 50_001},
        ],
    )
    problems = [it.problems for it in read_items(p)]
    assert problems[0] == ("query: is 10001 characters; the limit is 10000",)
    assert problems[1] == ("context: has 51 chunks; the limit is 50",)
    assert problems[2] == ("context[1]: is 10001 characters; the limit is 10000",)
    assert problems[3] == ("answer: is 50001 characters; the limit is 50000",)


def test_bad_lines_are_named(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"query": "q", "context": "c", "answer": "a"}\n\n{not json\n')
    with pytest.raises(TraceFileError, match=r"t\.jsonl:3: not valid JSON"):
        list(read_items(p))
    p.write_text('[1, 2]\n')
    with pytest.raises(TraceFileError, match=r"t\.jsonl:1: expected a JSON object, got list"):
        list(read_items(p))
    with pytest.raises(TraceFileError, match="no such file"):
        list(read_items(tmp_path / "missing.jsonl"))


def test_labels(tmp_path: Path) -> None:
    p = write_jsonl(
        tmp_path / "l.jsonl",
        [
            {"query": "q", "context": "c", "answer": "a", "label": 1},
            {"query": "q", "context": "c", "answer": "a", "label": False},
            {"query": "q", "context": "c", "answer": "a", "label": "correct"},
        ],
    )
    assert [it.label for it in read_items(p, label_field="label")] == [1, 0, 1]
    write_jsonl(p, [{"query": "q", "context": "c", "answer": "a", "label": 3}])
    with pytest.raises(TraceFileError, match=r"l\.jsonl:1: label must be 0/1"):
        list(read_items(p, label_field="label"))
    write_jsonl(p, [{"query": "q", "context": "c", "answer": "a"}])
    with pytest.raises(TraceFileError, match=r"l\.jsonl:1: missing label field 'label'"):
        list(read_items(p, label_field="label"))
