"""The serving encoder: Rust ``tokenizers`` + ONNX Runtime over the exported MiniLM graph.

No torch / transformers here (a test checks ``sys.modules``). The graph already mean-pools and
L2-normalises, so :meth:`OnnxEncoder.encode` is: tokenize (truncate to ``max_seq_len``), sort by
length, cut into batches bounded by ``max_batch_size`` and ``max_batch_tokens`` (padded), pad each
batch to its longest text, run, put rows back in input order.

Provider choice: ``auto`` uses CUDA only when a CUDA device really works (the onnxruntime-gpu
wheel lists ``CUDAExecutionProvider`` as *available* on GPU-less machines, so we probe the driver
and then check the providers the session actually got, falling back to CPU with a log line);
``cuda`` that cannot be honoured raises :class:`ProviderUnavailable`; ``cpu`` is CPU. The fp16
variant is a CUDA variant: on CPU the fp32 graph is served instead.

Row independence: a text's embedding must not depend on which other texts share its batch (the
same answer must get the same scores and the same verdict). fp32 and fp16 batches satisfy that to
rounding. The int8 graph is *dynamically* quantised: each MatMul quantises its activations with one
scale for the whole batch tensor, so a row's embedding moved with its neighbours (cosine 0.991
between a query encoded alone and in a batch; a benign query's injection probability went 0.775 ->
0.849 across batch mixes, either side of the threshold). int8 therefore runs one text per run
(:data:`ROW_DEPENDENT_VARIANTS`), which on these CPUs is also no slower for mixed lengths (413 vs 422
texts/s batched; short texts only: 1375 vs 1841).
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog
from tokenizers import Tokenizer

from certus.models.artifacts import (
    DIM,
    INPUT_NAMES,
    MODEL_FILES,
    OUTPUT_NAME,
    TOKEN_OUTPUT_NAME,
    TOKENIZER_FILE,
    VARIANTS,
    default_model_dir,
    ensure_model,
    read_manifest,
    resolve_variant,
)
from certus.sidecar.config import BatcherConfig, ModelConfig
from certus.sidecar.errors import Fatal, FieldViolation, InvalidArgument

log = structlog.get_logger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"
MAX_POSITIONS = 512  # BERT position embeddings


class ProviderUnavailable(Fatal):
    """The requested execution provider cannot run here (e.g. ``cuda`` without a usable GPU)."""


class ModelMissing(Fatal):
    """The exported model is not in the model directory."""


@functools.lru_cache(maxsize=1)
def cuda_probe() -> tuple[bool, str]:
    """(usable, reason): is there a CUDA device that the CUDA EP could use?

    Checks the EP is compiled in, then asks the CUDA driver for devices. The session's own
    provider list is checked again after creation (missing cuBLAS/cuDNN show up only there).
    """
    if CUDA_EP not in ort.get_available_providers():
        return False, "onnxruntime build has no CUDAExecutionProvider"
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False, "no CUDA driver (libcuda.so.1 not found)"
    try:
        if lib.cuInit(0) != 0:
            return False, "cuInit failed (no usable CUDA device)"
        count = ctypes.c_int(0)
        if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
            return False, "no CUDA device"
    except AttributeError:
        return False, "CUDA driver lacks cuInit/cuDeviceGetCount"
    return True, f"{count.value} CUDA device(s)"


def cuda_usable() -> bool:
    return cuda_probe()[0]


@functools.lru_cache(maxsize=1)
def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the ``nvidia-*`` wheels when they are installed (no-op otherwise)."""
    try:
        ort.preload_dlls()
    except Exception as exc:  # noqa: BLE001 - best effort; the session check below decides
        log.info("cuda_preload_failed", error=type(exc).__name__)


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_op_threads if intra_op_threads > 0 else (os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return opts


class TokenStates:
    """One text's contextual token states: what the claim/context token alignment reads.

    ``states`` are the last layer's states of the text's word pieces ([CLS]/[SEP] left out), each
    L2-normalised, float32 (float16 would halve the cache's memory but its NumPy conversions cost
    about 1 ms per request, both ways). ``words`` is the char span of the word each piece belongs
    to (its content-word test); only claims need it, so it is built from the pieces' word ids on
    first use. ``pieces`` is each piece's own char span (where ``question_fit`` locates an answer
    in a chunk).
    """

    __slots__ = ("states", "pieces", "_word_of", "_words")

    def __init__(
        self, states: npt.NDArray[np.float32], word_ids: list[int | None], offsets: list[tuple[int, int]]
    ) -> None:
        # NumPy arrays, not the tokenizer's lists: a cached text's lists of ids and offset tuples
        # are hundreds of references that every full garbage collection walks (about 18,000 such
        # lists in a warm cache made each full pass 20-80 ms); arrays are not tracked by the gc
        ids = np.array(word_ids, dtype=np.float64)  # None -> nan: [CLS], [SEP] and padding
        real = ~np.isnan(ids)
        spans = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets))
        self.states = states
        #: int64[n, 2]: each piece's char span in the text, row for row of ``states``
        self.pieces: npt.NDArray[np.int64] = spans.reshape(-1, 2)[real]
        self._word_of = ids[real].astype(np.int64)
        self._words: npt.NDArray[np.int32] | None = None

    @property
    def words(self) -> npt.NDArray[np.int32]:
        """int32[n, 2]: each piece's word span (start of the word's first piece, end of its last)."""
        if self._words is None:
            w = self._word_of
            if w.shape[0] == 0:
                first = last = row = w
            elif np.all(w[1:] >= w[:-1]):  # the tokenizer's order: each word's pieces in one run
                first = np.flatnonzero(np.concatenate(([True], w[1:] != w[:-1])))
                last = np.append(first[1:], w.shape[0]) - 1
                row = np.repeat(np.arange(first.shape[0]), np.diff(np.append(first, w.shape[0])))
            else:
                _, first, row = np.unique(w, return_index=True, return_inverse=True)
                _, last_from_end = np.unique(w[::-1], return_index=True)
                last = w.shape[0] - 1 - last_from_end
            spans = np.stack((self.pieces[first, 0], self.pieces[last, 1]), axis=1)
            self._words = spans[row.reshape(-1)].astype(np.int32).reshape(-1, 2)
        return self._words

    @property
    def nbytes(self) -> int:
        """The states, the piece spans and word ids, and the ``words`` array built from them."""
        return int(self.states.nbytes) + 32 * int(self.pieces.shape[0])

    def __repr__(self) -> str:
        return f"TokenStates({self.states.shape[0]} pieces)"


# variants whose rows are not independent within a batch (dynamic quantisation, see above)
ROW_DEPENDENT_VARIANTS = frozenset({"int8"})


class OnnxEncoder:
    """Sentence encoder (all-MiniLM-L6-v2, 384-d, L2-normalised) behind the batcher's protocol.

    Thread-safe: ONNX Runtime's ``run`` and the Rust tokenizer may be called concurrently.
    """

    def __init__(
        self,
        model_dir: Path | str | None = None,
        variant: str = "fp32",
        provider: str = "auto",
        intra_op_threads: int = 0,
        max_seq_len: int = 256,
        *,
        max_batch_size: int = 64,
        max_batch_tokens: int = 16384,
        arena_shrink_tokens: int = 4096,
        export_if_missing: bool = False,
        export_python: str = "",
    ) -> None:
        violations = []
        variant = resolve_variant(variant)
        if variant not in VARIANTS:
            violations.append(FieldViolation("model.variant", f"must be one of {', '.join(VARIANTS)}"))
        if provider not in PROVIDERS:
            violations.append(FieldViolation("model.provider", f"must be one of {', '.join(PROVIDERS)}"))
        if not 2 <= max_seq_len <= MAX_POSITIONS:
            violations.append(FieldViolation("model.max_seq_len", f"must be in 2..{MAX_POSITIONS}"))
        if intra_op_threads < 0:
            violations.append(FieldViolation("model.intra_op_threads", "must be >= 0 (0 = one per core)"))
        if max_batch_size < 1:
            violations.append(FieldViolation("max_batch_size", "must be >= 1"))
        if max_batch_tokens < max_seq_len:
            violations.append(FieldViolation("max_batch_tokens", "must be >= model.max_seq_len"))
        if arena_shrink_tokens < 0:
            violations.append(FieldViolation("model.arena_shrink_tokens", "must be >= 0 (0 = never shrink)"))
        if violations:
            raise InvalidArgument(violations)

        self.model_dir = Path(model_dir).expanduser() if model_dir is not None else default_model_dir()
        self.max_seq_len = max_seq_len
        self.max_batch_size = max_batch_size
        self.max_batch_tokens = max_batch_tokens
        self.requested_provider = provider
        self.requested_variant = variant
        self._export_if_missing = export_if_missing
        self._export_python = export_python

        use_cuda = False
        if provider in ("auto", "cuda"):
            usable, reason = cuda_probe()
            if usable:
                use_cuda = True
            elif provider == "cuda":
                raise ProviderUnavailable(f"model.provider=cuda requested but CUDA is not usable here: {reason}")
            else:
                log.info("encoder_provider_fallback", requested="auto", using=CPU_EP, reason=reason)

        self._session: ort.InferenceSession | None = None
        if use_cuda:
            _preload_cuda_libraries()
            self.variant = variant
            session = self._create(variant, [(CUDA_EP, {"device_id": 0}), CPU_EP], intra_op_threads)
            if session.get_providers()[0] == CUDA_EP:
                self._session = session
            elif provider == "cuda":
                raise ProviderUnavailable(
                    "model.provider=cuda requested but ONNX Runtime could not start the CUDA "
                    "execution provider (check CUDA/cuDNN libraries); providers: "
                    + ", ".join(session.get_providers())
                )
            else:
                log.warning("encoder_provider_fallback", requested="auto", using=CPU_EP, reason="cuda EP failed to start")
        if self._session is None:
            self.variant = "fp32" if variant == "fp16" else variant
            if variant == "fp16":
                log.info("encoder_variant_fallback", requested="fp16", using="fp32", reason="fp16 is a CUDA variant")
            self._session = self._create(self.variant, [CPU_EP], intra_op_threads)

        self.provider: str = self._session.get_providers()[0]
        self._io_binding = self.provider == CUDA_EP
        self.arena_shrink_tokens = arena_shrink_tokens
        # texts per model run: one for row-dependent variants; max_batch_size stays the batcher's bound
        self.rows_per_run = 1 if self.variant in ROW_DEPENDENT_VARIANTS else max_batch_size
        self.arena_shrinks = 0
        self._shrink_options = ort.RunOptions()
        self._shrink_options.add_run_config_entry(
            "memory.enable_memory_arena_shrinkage", "cpu:0;gpu:0" if self._io_binding else "cpu:0"
        )
        out_shape = self._session.get_outputs()[0].shape
        self.dim: int = int(out_shape[1]) if isinstance(out_shape[1], int) else DIM

        self.texts_encoded = 0
        self.tokens_encoded = 0
        self._tokenizer = Tokenizer.from_file(str(self.model_dir / TOKENIZER_FILE))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=max_seq_len)
        log.info(
            "encoder_ready",
            provider=self.provider,
            variant=self.variant,
            dim=self.dim,
            max_seq_len=max_seq_len,
            intra_op_threads=self._session.get_session_options().intra_op_num_threads,
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_config(cls, model: ModelConfig, batcher: BatcherConfig | None = None) -> "OnnxEncoder":
        """The serving encoder for ``Config.model`` (+ batch bounds), exporting the model if missing."""
        b = batcher or BatcherConfig()
        return cls(
            model.model_dir,
            variant=model.variant,
            provider=model.provider,
            intra_op_threads=model.intra_op_threads,
            max_seq_len=model.max_seq_len,
            max_batch_size=b.max_batch_size,
            max_batch_tokens=max(b.max_batch_tokens, model.max_seq_len),
            arena_shrink_tokens=model.arena_shrink_tokens,
            export_if_missing=True,
            export_python=model.export_python,
        )

    def _create(self, variant: str, providers: list[Any], intra_op_threads: int) -> ort.InferenceSession:
        entry = read_manifest(self.model_dir).get("variants", {}).get(variant, {})
        path = self.model_dir / entry.get("file", MODEL_FILES[variant])
        if not path.is_file() or not (self.model_dir / TOKENIZER_FILE).is_file():
            if not self._export_if_missing:
                raise ModelMissing(
                    f"no {variant} model in {self.model_dir}: run `certus-sidecar models export "
                    f"--variant {variant} --out {self.model_dir}`"
                )
            path = ensure_model(self.model_dir, variant, export_python=self._export_python)
        return ort.InferenceSession(str(path), _session_options(intra_op_threads), providers=providers)

    # -- protocol -----------------------------------------------------------------------------

    def _encodings(self, texts: Sequence[str], offsets: bool) -> list[Any]:
        if isinstance(texts, (str, bytes)):
            raise InvalidArgument.field("texts", "must be a sequence of strings, not a single string")
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise InvalidArgument.field(f"texts[{i}]", f"must be a string, got {type(t).__name__}")
        if offsets:
            return list(self._tokenizer.encode_batch(items))
        return list(self._tokenizer.encode_batch_fast(items))

    def token_counts(self, texts: Sequence[str]) -> npt.NDArray[np.int64]:
        """Tokens per text after truncation to ``max_seq_len`` (with [CLS]/[SEP])."""
        encs = self._encodings(texts, offsets=False)
        return np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """float32[len(texts), dim], rows L2-normalised, in input order."""
        return self._encode(self._encodings(texts, offsets=False), None)

    def encode_tokens(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[TokenStates]]:
        """:meth:`encode` and, from the same model run, each text's :class:`TokenStates`."""
        encs = self._encodings(texts, offsets=True)
        tokens: list[TokenStates | None] = [None] * len(encs)
        vecs = self._encode(encs, tokens)
        return vecs, tokens  # type: ignore[return-value]  # every slot is filled

    def _encode(self, encs: list[Any], tokens: list[TokenStates | None] | None) -> npt.NDArray[np.float32]:
        n = len(encs)
        out = np.empty((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        ids = [e.ids for e in encs]
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=n)
        self.texts_encoded += n  # plain counters for benchmarks and GetInfo (GIL-atomic enough)
        self.tokens_encoded += int(lens.sum())
        order = np.argsort(lens, kind="stable")
        for chunk in self._chunks(lens[order]):
            rows = order[chunk]
            pooled, states = self._run_batch([ids[r] for r in rows], lens[rows], tokens is not None)
            out[rows] = pooled
            if tokens is not None:
                for k, r in enumerate(rows):
                    e = encs[r]
                    tokens[r] = TokenStates(np.ascontiguousarray(states[k, 1 : len(e.ids) - 1]), e.word_ids, e.offsets)
        return out

    def _chunks(self, sorted_lens: npt.NDArray[np.int64]) -> list[slice]:
        """Consecutive slices of the length-sorted texts within both batch bounds."""
        chunks: list[slice] = []
        start = 0
        n = len(sorted_lens)
        while start < n:
            end = start + 1
            while (
                end < n
                and end - start < self.rows_per_run
                and (end - start + 1) * int(sorted_lens[end]) <= self.max_batch_tokens
            ):
                end += 1
            chunks.append(slice(start, end))
            start = end
        return chunks

    def _run_batch(
        self, ids: list[list[int]], lens: npt.NDArray[np.int64], with_tokens: bool
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32] | None]:
        """Pooled embeddings [b, dim] and, when asked, the token states [b, width, dim]."""
        b, width = len(ids), int(lens.max())
        mask = np.arange(width)[None, :] < lens[:, None]
        input_ids = np.zeros((b, width), dtype=np.int64)
        input_ids[mask] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lens.sum()))
        attention = mask.astype(np.int64)
        session = self._session
        assert session is not None
        # a batch above the bound returns the arena's growth at the end of its run (see ModelConfig)
        run_options = None
        if self.arena_shrink_tokens and b * width > self.arena_shrink_tokens:
            run_options = self._shrink_options
            self.arena_shrinks += 1
        names = [OUTPUT_NAME, TOKEN_OUTPUT_NAME] if with_tokens else [OUTPUT_NAME]
        if not self._io_binding:
            result = session.run(names, {INPUT_NAMES[0]: input_ids, INPUT_NAMES[1]: attention}, run_options)
            pooled = np.asarray(result[0], dtype=np.float32)
            return pooled, (np.asarray(result[1], dtype=np.float32) if with_tokens else None)
        # CUDA: inputs copied to the device once, outputs written straight into host arrays.
        out = np.empty((b, self.dim), dtype=np.float32)
        states = np.empty((b, width, self.dim), dtype=np.float32) if with_tokens else None
        binding = session.io_binding()
        binding.bind_ortvalue_input(INPUT_NAMES[0], ort.OrtValue.ortvalue_from_numpy(input_ids, "cuda", 0))
        binding.bind_ortvalue_input(INPUT_NAMES[1], ort.OrtValue.ortvalue_from_numpy(attention, "cuda", 0))
        binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        if states is not None:
            binding.bind_output(TOKEN_OUTPUT_NAME, "cpu", 0, np.float32, list(states.shape), states.ctypes.data)
        session.run_with_iobinding(binding, run_options)
        return out, states

    def health(self) -> bool:
        """One tiny inference: right shape, finite, unit norm."""
        try:
            v = self.encode(["health check"])
        except Exception:  # noqa: BLE001 - health must answer, not raise
            log.exception("encoder_health_failed")
            return False
        return bool(v.shape == (1, self.dim) and np.all(np.isfinite(v)) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-3)

    def __repr__(self) -> str:
        return f"OnnxEncoder(model_dir={str(self.model_dir)!r}, variant={self.variant!r}, provider={self.provider!r})"


__all__ = ["OnnxEncoder", "TokenStates", "ProviderUnavailable", "ModelMissing", "cuda_probe", "cuda_usable", "ensure_model"]
