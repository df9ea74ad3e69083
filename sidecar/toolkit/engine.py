"""The sidecar's scoring stage, in-process, for offline work (evaluate, calibrate, validate).

Built from the same :class:`~sidecar.config.Config` and the same components as the server
(``App.create``): ONNX encoder -> :class:`~sidecar.batcher.Batcher` -> :class:`~sidecar.scoring.Scorer`,
in the same order as the pipeline (``layout`` -> ``embed`` -> ``score``), so an offline score is the
number the Evaluate RPC returns for the same input. Many inputs are kept in flight at once so the
batcher fills its batches; the number of texts queued is capped well below the batcher's queue
bound, so offline runs never hit ``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from typing import Any

from certus.sidecar.batcher import Batcher
from certus.sidecar.config import Config
from certus.sidecar.domain import EvaluateInput, Scores
from certus.sidecar.scoring import Scorer


def build_encoder(cfg: Config) -> Any:
    """The serving encoder for ``cfg`` (exports the model first if it is missing), as App.create does."""
    from certus.models.encoder import OnnxEncoder

    return OnnxEncoder.from_config(cfg.model, cfg.batcher)


class _TextBudget:
    """Caps the texts queued in the batcher by all in-flight inputs together."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self._cond = asyncio.Condition()

    async def acquire(self, n: int) -> int:
        n = min(max(1, n), self.limit)
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.limit)
            self.used += n
        return n

    async def release(self, n: int) -> None:
        async with self._cond:
            self.used -= n
            self._cond.notify_all()


class OfflineScorer:
    """``async with OfflineScorer(cfg) as s: scores = await s.score_many(inputs)``."""

    def __init__(self, cfg: Config, encoder: Any = None, *, max_in_flight: int = 512, kernel_threads: int = 1) -> None:
        self.cfg = cfg
        self._encoder = encoder
        self.max_in_flight = max_in_flight
        self._kernel_threads = kernel_threads
        self.batcher: Batcher | None = None
        self.scorer = Scorer(cfg.scoring)
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def encoder(self) -> Any:
        return self._encoder

    async def __aenter__(self) -> "OfflineScorer":
        loop = asyncio.get_running_loop()
        if self._encoder is None:
            self._encoder = await loop.run_in_executor(None, build_encoder, self.cfg)
        self.batcher = Batcher(self._encoder, self.cfg.batcher)
        await self.batcher.start()
        self._pool = concurrent.futures.ThreadPoolExecutor(self._kernel_threads, thread_name_prefix="kernels")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def score(self, inp: EvaluateInput, budget: "_TextBudget | None" = None) -> Scores:
        """One input through the pipeline's scoring steps (layout -> batched embed -> kernels)."""
        if self.batcher is None or self._pool is None:
            raise RuntimeError("use `async with OfflineScorer(...)` before scoring")
        layout = self.scorer.layout(inp)
        taken = await budget.acquire(len(layout.texts)) if budget is not None else 0
        try:
            vecs, tokens = await self.batcher.embed_tokens(layout.texts)
        finally:
            if budget is not None:
                await budget.release(taken)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.scorer.score, inp, layout, vecs, tokens)

    async def score_many(
        self,
        inputs: Sequence[EvaluateInput],
        on_done: Callable[[int], None] | None = None,
    ) -> list[Scores]:
        """Scores for every input, in input order, with many inputs in flight."""
        if self.batcher is None:
            raise RuntimeError("use `async with OfflineScorer(...)` before scoring")
        budget = _TextBudget(self.cfg.batcher.max_queue // 2)
        slots = asyncio.Semaphore(self.max_in_flight)
        out: list[Scores | None] = [None] * len(inputs)

        async def one(i: int) -> None:
            try:
                out[i] = await self.score(inputs[i], budget)
            finally:
                slots.release()
            if on_done is not None:
                on_done(1)

        tasks: list[asyncio.Future[None]] = []
        try:
            for i in range(len(inputs)):
                await slots.acquire()
                tasks.append(asyncio.ensure_future(one(i)))
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return [s for s in out if s is not None]
