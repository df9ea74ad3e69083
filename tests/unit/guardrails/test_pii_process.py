"""The PII analyzer in its child process: same answers as in-process, survives its child's death,
and never outlives its parent."""

from __future__ import annotations

import os
import signal

import pytest

from certus.sidecar.guardrails.pii import PiiAnalyzer, ProcessPiiAnalyzer
from tests.conftest import process_running, wait_gone

TEXTS = [
    "John Smith can be reached at john.smith@example.com or 212-555-0199.",
    "The card 4111 1111 1111 1111 was charged twice; pay to DE89 3704 0044 0532 0130 00.",
    "The login came from 203.0.113.77 at midnight, said Maria Garcia.",
    "Nothing personal in this sentence about the Normans.",
    "![" * 2000 + " see ann.lee@example.org " + "+" * 2000,
]


@pytest.fixture(scope="module")
def process_analyzer():
    analyzer = ProcessPiiAnalyzer(ner=True)
    yield analyzer
    analyzer.close()


def test_same_spans_as_in_process(process_analyzer: ProcessPiiAnalyzer) -> None:
    local = PiiAnalyzer(ner=True)
    assert process_analyzer.pid != os.getpid()
    assert (process_analyzer.ner_model, tuple(process_analyzer.entities)) == (local.ner_model, tuple(local.entities))
    for text in TEXTS:
        assert process_analyzer.analyze(text) == local.analyze(text), text
    assert {s.entity_type for s in process_analyzer.analyze(TEXTS[0])} == {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER"}
    assert process_analyzer.analyze("") == []


def test_a_killed_child_is_replaced_and_the_call_still_answers(process_analyzer: ProcessPiiAnalyzer) -> None:
    old, restarts = process_analyzer.pid, process_analyzer.restarts
    os.kill(old, signal.SIGKILL)
    assert wait_gone([old], 10) == []
    spans = process_analyzer.analyze(TEXTS[0])
    assert {s.entity_type for s in spans} == {"PERSON", "EMAIL_ADDRESS", "PHONE_NUMBER"}
    assert process_analyzer.restarts == restarts + 1
    assert process_analyzer.pid not in (old, os.getpid()) and process_running(process_analyzer.pid)


def test_close_stops_the_child() -> None:
    analyzer = ProcessPiiAnalyzer(ner=False)
    pid = analyzer.pid
    assert analyzer.analyze("mail bob@example.com")[0].entity_type == "EMAIL_ADDRESS"
    analyzer.close()
    assert wait_gone([pid], 10) == []
