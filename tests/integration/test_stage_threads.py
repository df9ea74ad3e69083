"""One thread pool runs both CPU stages of every request (``server.stage_threads``).

The guardrail scan and the scoring hold the GIL for most of their work, so a pool per stage only
added threads contending for it (``tests/benchmarks/bench_floor.py``). Real sidecar, real model:
the stages of concurrent calls run on the pool's threads and on no others, and a bad setting is
refused naming it.
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from certus.sidecar import config as config_mod
from certus.sidecar.config import ConfigError
from certus.sidecar.protos import pb
from tests.conftest import make_config, start_sidecar


def _request() -> Any:
    return pb.EvaluateRequest(
        workspace_id="acme",
        query=f"What did the report say? {uuid.uuid4().hex}",
        response="Revenue grew 8% to $89.5B in Q4. The report was published in January.",
        context=["Apple reported Q4 revenue of $89.5B, up 8% year over year.", "The report came out in January."],
    )


def _stage_threads(tmp_path: Path, encoder: Any, threads: int, calls: int) -> dict[str, set[str]]:
    """The names of the threads each stage ran on, over ``calls`` concurrent Evaluate calls."""
    sc = start_sidecar(make_config(tmp_path, server={"stage_threads": threads}), encoder=encoder)
    seen: dict[str, set[str]] = {"scan": set(), "score": set()}
    lock = threading.Lock()
    pipeline = sc.app.pipeline
    scan, score = pipeline._scan, pipeline._score

    def recorded(stage: str, fn: Any) -> Any:
        def run(*args: Any) -> Any:
            with lock:
                seen[stage].add(threading.current_thread().name)
            return fn(*args)

        return run

    pipeline._scan, pipeline._score = recorded("scan", scan), recorded("score", score)
    try:
        with concurrent.futures.ThreadPoolExecutor(calls) as pool:
            answers = list(pool.map(lambda _: sc.stub.Evaluate(_request(), timeout=60), range(calls)))
    finally:
        sc.stop()
    assert all(a.evidence_id and not a.skipped for a in answers)
    return seen


def test_with_one_stage_thread_both_stages_of_every_call_run_on_it(tmp_path: Path, encoder: Any) -> None:
    seen = _stage_threads(tmp_path, encoder, threads=1, calls=6)
    assert len(seen["scan"]) == 1
    assert seen["scan"] == seen["score"]
    assert next(iter(seen["scan"])).startswith("stages")


def test_the_default_pool_has_two_threads_shared_by_both_stages(tmp_path: Path, encoder: Any) -> None:
    assert config_mod.load(env={}).server.stage_threads == 2
    seen = _stage_threads(tmp_path, encoder, threads=2, calls=8)
    used = seen["scan"] | seen["score"]
    assert 1 <= len(used) <= 2
    assert all(name.startswith("stages") for name in used)


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_fewer_than_one_stage_thread_is_refused_naming_the_setting(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"CERTUS_STAGE_THREADS \(server.stage_threads\): must be at least 1"):
        config_mod.load(env={"CERTUS_STAGE_THREADS": raw})


def test_stage_threads_from_the_environment() -> None:
    assert config_mod.load(env={"CERTUS_STAGE_THREADS": "1"}).server.stage_threads == 1
