from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from numba.core.dispatcher import Dispatcher

from certus import kernels
from tests.conftest import OUTSIDE

REPO = Path(__file__).resolve().parents[3]
KERNEL_MODULES = [
    "certus.kernels.hashing",
    "certus.kernels.grounding",
    "certus.kernels.numeric",
    "certus.kernels.similarity",
    "certus.kernels.pooling",
    "certus.kernels.reader",
    "certus.kernels.sentences",
]


def test_import_is_lazy() -> None:
    code = (
        "import sys; from certus import kernels; "
        "print('numba' in sys.modules, 'certus.kernels.grounding' in sys.modules); "
        "kernels.term_grounding; "
        "print('numba' in sys.modules, 'certus.kernels.grounding' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "True"]


def test_every_public_name_resolves() -> None:
    # Import every submodule first: a submodule named like an export would shadow it.
    for path in sorted((REPO / "kernels").glob("*.py")):
        importlib.import_module(f"certus.kernels.{path.stem}")
    for name in kernels.__all__:
        assert not isinstance(getattr(kernels, name), type(importlib)), name
    for name in kernels.__all__:
        assert getattr(kernels, name) is not None, name
    assert set(dir(kernels)) == set(kernels.__all__)
    with pytest.raises(AttributeError):
        kernels.no_such_kernel  # noqa: B018


def test_from_import() -> None:
    from certus.kernels import cosine_matrix, split_sentences, term_grounding

    assert callable(cosine_matrix) and callable(split_sentences) and callable(term_grounding)


@pytest.mark.parametrize("module", KERNEL_MODULES)
def test_kernels_are_cached_nogil_with_explicit_signatures(module: str) -> None:
    dispatchers = [v for v in vars(importlib.import_module(module)).values() if isinstance(v, Dispatcher)]
    assert dispatchers
    for d in dispatchers:
        assert d.targetoptions.get("nogil") is True, d.__name__
        assert type(d._cache).__name__ == "FunctionCache", d.__name__  # cache=True
        assert len(d.signatures) == 1 and not d._can_compile, d.__name__  # explicit, frozen


def test_warmup_runs_every_kernel() -> None:
    assert kernels.warmup() >= 0.0
    assert kernels.warmup() >= 0.0  # idempotent
