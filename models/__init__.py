"""Compute backends: the sentence encoder behind a small protocol.

``certus.models.export`` turns the packaged all-MiniLM-L6-v2 weights into ONNX (one-time; runs in
the export toolchain's own environment and process, with torch); ``certus.models.artifacts`` is the
server's side of it (reads and checks the exported files, runs the toolchain when one is missing);
``certus.models.encoder`` serves them with ONNX Runtime + Rust ``tokenizers`` (no torch anywhere in
the serving environment).
The batcher depends only on :class:`Encoder`.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Encoder(Protocol):
    """What the batcher needs from a sentence encoder."""

    max_batch_size: int
    dim: int

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """L2-normalised embeddings, float32[len(texts), dim]; (0, dim) for no texts."""
        ...

    def encode_tokens(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[Any]]:
        """``encode(texts)`` and, from the same run, each text's token states (``TokenStates``)."""
        ...

    def token_counts(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """Tokens per text after truncation (special tokens included): for sorting and capping."""
        ...

    def health(self) -> bool:
        """True when the encoder can serve."""
        ...


__all__ = ["Encoder"]
