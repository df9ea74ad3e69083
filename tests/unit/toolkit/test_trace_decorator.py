"""``@trace``: what is logged, from where, off the caller's thread, and never failing the caller."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from certus.client import tracing as td
from certus.client.tracing import TraceWriter, trace
from tests.conftest import OUTSIDE


def rows(path: Path) -> list[dict[str, Any]]:
    assert td.flush(10)
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dict_return_like_the_seed(tmp_path: Path) -> None:
    log = tmp_path / "traces.jsonl"

    @trace(log_path=log)
    def rag_pipeline(query: str) -> dict[str, Any]:
        return {"context": ["chunk one", "chunk two"], "answer": "the answer", "query": query}

    assert rag_pipeline("What was Q4 revenue?") == {
        "context": ["chunk one", "chunk two"],
        "answer": "the answer",
        "query": "What was Q4 revenue?",
    }
    (r,) = rows(log)
    assert r["query"] == "What was Q4 revenue?"
    assert r["context"] == ["chunk one", "chunk two"]
    assert r["answer"] == "the answer"
    assert r["error"] is None
    assert r["function"].endswith("rag_pipeline")
    assert r["latency_ms"] >= 0.0
    assert r["timestamp"].endswith("Z") and len(r["trace_id"]) == 32
    assert stat.S_IMODE(os.stat(log).st_mode) == 0o600  # texts inside: owner only


def test_string_return_takes_query_and_context_from_arguments(tmp_path: Path) -> None:
    log = tmp_path / "t.jsonl"

    @trace(log_path=log)
    def generate(query: str, context: str, temperature: float = 0.0) -> str:
        return f"answer to {query}"

    generate("q1", "ctx1")
    generate(query="q2", context="ctx2")
    generate("q3", context=["a", "b"])
    got = [(r["query"], r["context"], r["answer"]) for r in rows(log)]
    assert got == [("q1", "ctx1", "answer to q1"), ("q2", "ctx2", "answer to q2"), ("q3", ["a", "b"], "answer to q3")]


def test_configurable_field_names_and_extract(tmp_path: Path) -> None:
    log = tmp_path / "t.jsonl"

    @trace(log_path=log, query_field="question", context_field="docs", answer_field="text")
    def f(question: str) -> dict[str, Any]:
        return {"docs": [{"page_content": "doc A"}, {"text": "doc B"}], "text": "ans"}

    @trace(log_path=log, extract=lambda args, kwargs, result: {"query": args[0], "context": result[1], "answer": result[0], "model": "m1"})
    def g(q: str) -> tuple[str, list[str]]:
        return ("ans2", ["c"])

    f("q")
    g("q2")
    a, b = rows(log)
    assert (a["query"], a["context"], a["answer"]) == ("q", ["doc A", "doc B"], "ans")
    assert (b["query"], b["context"], b["answer"], b["metadata"]) == ("q2", ["c"], "ans2", {"model": "m1"})


def test_exceptions_are_logged_and_reraised(tmp_path: Path) -> None:
    log = tmp_path / "t.jsonl"

    @trace(log_path=log)
    def boom(query: str) -> str:
        raise KeyError("missing index")

    with pytest.raises(KeyError, match="missing index"):
        boom("q")
    (r,) = rows(log)
    assert r["error"] == "KeyError: 'missing index'"
    assert r["answer"] is None and r["query"] == "q"


def test_async_functions(tmp_path: Path) -> None:
    log = tmp_path / "t.jsonl"

    @trace(log_path=log)
    async def agen(query: str, context: list[str]) -> str:
        await asyncio.sleep(0)
        return "async answer"

    assert asyncio.run(agen("q", ["c"])) == "async answer"
    (r,) = rows(log)
    assert (r["query"], r["context"], r["answer"]) == ("q", ["c"], "async answer")


def test_the_record_keeps_what_the_context_held_at_return(tmp_path: Path) -> None:
    log = tmp_path / "t.jsonl"
    shared = ["original"]

    @trace(log_path=log)
    def f(query: str) -> dict[str, Any]:
        return {"query": query, "context": shared, "answer": "a"}

    f("q")
    shared.append("added later")
    assert rows(log)[0]["context"] == ["original"]


def test_writes_happen_on_the_writer_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "t.jsonl"
    seen: list[str] = []
    real = TraceWriter._serialize

    def spy(record: dict[str, Any]) -> str:
        seen.append(threading.current_thread().name)
        return real(record)

    monkeypatch.setattr(TraceWriter, "_serialize", staticmethod(spy))

    @trace(log_path=log)
    def f(query: str) -> str:
        return "a"

    for i in range(20):
        f(f"q{i}")
    assert len(rows(log)) == 20
    assert seen and all(name.startswith("trace-writer:") for name in seen)


def test_a_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    w = TraceWriter(tmp_path / "full.jsonl", max_queue=0)
    assert w.put({"ts": 0.0, "trace_id": "x", "function": "f", "latency_ms": 0.0}, None) is False
    assert w.stats.dropped == 1
    w.close()


def test_an_unwritable_file_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")

    @trace(log_path=blocker / "t.jsonl")
    def f(query: str) -> str:
        return "a"

    assert f("q") == "a"
    td.flush(10)
    assert td.stats(blocker / "t.jsonl").write_errors == 1


def test_disabled_returns_the_function_itself(tmp_path: Path) -> None:
    def f(query: str) -> str:
        return "a"

    assert trace(f, log_path=tmp_path / "t.jsonl", enabled=False) is f
    assert trace(f, log_path=tmp_path / "t.jsonl") is not f


def test_pending_records_are_written_at_exit(tmp_path: Path) -> None:
    log = tmp_path / "exit.jsonl"
    code = (
        "from certus.sidecar import trace\n"
        f"@trace(log_path={str(log)!r})\n"
        "def f(query):\n    return 'a'\n"
        "for i in range(500):\n    f(f'q{i}')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = log.read_text().splitlines()
    assert len(lines) == 500
    assert json.loads(lines[-1])["query"] == "q499"
