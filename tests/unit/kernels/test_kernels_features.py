from __future__ import annotations

import numpy as np
import pytest

from certus.kernels import (
    KernelInputError,
    PackedFeatures,
    TextFeatures,
    extract_numbers,
    extract_terms,
    features,
    features_many,
    pack_features,
)

TEXTS = ["Apple's Q4 revenue was $89.5 billion.", "", "the of and", "12% of 2019", "Revenues grew."]


def test_features_fields() -> None:
    f = features(TEXTS[0])
    assert isinstance(f, TextFeatures)
    assert f.terms.dtype == np.int64 and f.terms.shape == (4,)
    assert f.numbers.tolist() == [[89.5e9, 1.0]]


def test_packed_csr_layout() -> None:
    packed = features_many(TEXTS)
    assert isinstance(packed, PackedFeatures) and len(packed) == len(TEXTS)
    assert packed.term_offsets.tolist() == [0, 4, 4, 4, 6, 8]
    assert packed.number_offsets.tolist() == [0, 1, 1, 1, 3, 3]
    assert packed.terms.dtype == np.int64 and packed.terms.flags.c_contiguous
    assert packed.numbers.dtype == np.float64 and packed.numbers.shape == (3, 2)
    for i, text in enumerate(TEXTS):
        item = packed.item(i)
        assert item.terms.tolist() == extract_terms(text).tolist()
        assert item.numbers.tolist() == extract_numbers(text).tolist()
    with pytest.raises(IndexError):
        packed.item(len(TEXTS))


def test_pack_nothing() -> None:
    packed = pack_features([])
    assert len(packed) == 0
    assert packed.term_offsets.tolist() == [0] and packed.number_offsets.tolist() == [0]
    assert packed.terms.shape == (0,) and packed.numbers.shape == (0, 2)


def test_pack_rejects_bad_items() -> None:
    with pytest.raises(KernelInputError) as info:
        pack_features([features("a"), "b"])  # type: ignore[list-item]
    assert info.value.field == "items[1]"
    bad = TextFeatures(terms=np.array([1.5]), numbers=np.empty((0, 2)))
    with pytest.raises(KernelInputError) as info:
        pack_features([bad])
    assert info.value.field == "items[0].terms"


def test_features_many_rejects_bad_texts() -> None:
    with pytest.raises(KernelInputError) as info:
        features_many(["ok", 3])  # type: ignore[list-item]
    assert info.value.field == "texts[1]"
    with pytest.raises(KernelInputError) as info:
        features_many("a single string")
    assert info.value.field == "texts"


def test_dtype_message_names_byte_order() -> None:
    from certus.kernels import term_grounding

    with pytest.raises(KernelInputError, match=r"resp_terms: must have dtype int64, got >i8"):
        term_grounding(np.array([1], dtype=">i8"), np.array([1], dtype=np.int64))
