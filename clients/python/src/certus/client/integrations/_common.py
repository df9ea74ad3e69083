"""What the integrations share: one evaluation submitted off the caller's path."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Callable, Mapping, Sequence

from certus.client.sync import Evaluation, SidecarClient, client_from

OnEvaluation = Callable[[Evaluation], None]


class Submitter:
    """``submit(query, answer, context)``: a non-blocking evaluation through the sidecar client;
    ``on_evaluation(evaluation)`` is called when it is answered (skipped ones included)."""

    def __init__(self, sidecar: "str | SidecarClient | Mapping[str, Any]", on_evaluation: OnEvaluation | None = None) -> None:
        self.client = client_from(sidecar)
        self.on_evaluation = on_evaluation
        self.futures: list[concurrent.futures.Future[Evaluation]] = []  # the evaluations submitted

    def submit(self, query: str, answer: str, context: Sequence[str], **kw: Any) -> concurrent.futures.Future[Evaluation]:
        fut = self.client.submit(query, answer, list(context), **kw)
        if self.on_evaluation is not None:
            callback = self.on_evaluation
            fut.add_done_callback(lambda f: callback(f.result()))
        self.futures.append(fut)
        return fut
