"""``acdc export SOURCE --format compressed|onnx|cpu-sparse --out PATH``: deployable files of a sparse model."""

from __future__ import annotations

import argparse

from ..export import FORMATS, export, format_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a sparse model as a compressed checkpoint, ONNX, or CPU-sparse model")
    p.add_argument("source", help="run directory (its sparse model) or a model .safetensors with recipe.yaml beside")
    p.add_argument("--format", required=True, choices=FORMATS, help="output format")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--gzip", action="store_true", help="compressed: gzip the file (smaller, slower to load)")
    p.add_argument("--sparse-initializers", action="store_true",
                   help="onnx: store weights with >= 2/3 zeros as COO sparse initializers (smaller file; ONNX "
                        "Runtime densifies them at load)")
    p.add_argument("--batch", type=int, default=1,
                   help="cpu-sparse: batch size each layer is timed at to choose CSR or dense (default 1)")
    p.add_argument("--structure", default=None, metavar="unstructured|N:M",
                   help="sparsity structure to validate and record (default: the recipe's method.structure)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    report = export(args.source, args.format, args.out, gzip=args.gzip,
                    sparse_initializers=args.sparse_initializers, batch=args.batch, structure=args.structure)
    print(format_report(report))
    return 0
