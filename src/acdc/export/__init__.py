"""Export a trained sparse model: compressed checkpoint, ONNX, or the CPU-sparse inference form.

``export(source, fmt, out)`` is what ``acdc export`` calls; the pieces are usable on their own:
:func:`save_compressed` / :func:`load_compressed`, :func:`export_onnx`, :func:`acdc.deploy.to_cpu_sparse`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .compressed import is_compressed, load_compressed, read_sparsity_config, save_compressed
from .nm import NMPatternError, check_nm, parse_nm
from .onnx_export import export_onnx, run_onnx
from .source import Source, load_source

FORMATS = ("compressed", "onnx", "cpu-sparse")

__all__ = ["FORMATS", "NMPatternError", "Source", "check_nm", "export", "export_onnx", "is_compressed",
           "load_compressed", "load_source", "parse_nm", "read_sparsity_config", "run_onnx", "save_compressed"]


def _check_options(fmt: str, gzip: bool, sparse_initializers: bool, batch: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if gzip and fmt != "compressed":
        raise ValueError("--gzip applies to --format compressed only")
    if sparse_initializers and fmt != "onnx":
        raise ValueError("--sparse-initializers applies to --format onnx only")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")


def export(
    source: str | Path,
    fmt: str,
    out: str | Path,
    *,
    gzip: bool = False,
    sparse_initializers: bool = False,
    batch: int = 1,
    structure: str | None = None,
) -> dict[str, Any]:
    """Export ``source`` (a run directory or a model file with its ``recipe.yaml``) to ``out`` in ``fmt``.

    ``structure`` ("unstructured" or "N:M"; default the recipe's ``method.structure``) is validated on every
    prunable weight before anything is written and recorded in the output. ``batch`` is the input batch the
    CPU-sparse layers are timed on. Returns a report (path, bytes, sparsity config, per-format details).
    """
    _check_options(fmt, gzip, sparse_initializers, batch)
    src = load_source(source)
    structure = structure or src.structure
    parse_nm(structure)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; give a file path")
    from ..targets import prunable_parameters

    names = list(src.masks) if src.masks is not None else list(prunable_parameters(src.model))
    sd = src.model.state_dict()
    checked = check_nm({n: sd[n] for n in names}, structure)  # raises NMPatternError before writing
    meta = {"source": str(src.path), "recipe": src.recipe.name, "sparsity_structure": structure}
    report: dict[str, Any] = {"format": fmt, "source": str(src.path), "structure": structure,
                              "nm_checked_layers": len(checked)}
    if fmt == "compressed":
        report["sparsity_config"] = save_compressed(out, src.model, src.masks, structure=structure, gzip=gzip,
                                                    metadata=meta)
    elif fmt == "onnx":
        report.update(export_onnx(src.model, src.example, out, sparse_initializers=sparse_initializers,
                                  metadata={k: str(v) for k, v in meta.items()}))
    else:
        from ..deploy import save_cpu_sparse, to_cpu_sparse

        example = src.example.expand(batch, *src.example.shape[1:]).contiguous()
        model = to_cpu_sparse(src.model, example)
        save_cpu_sparse(out, model, meta)
        report["layers"] = model.cpu_sparse_plan
    report["path"] = str(out)
    report["bytes"] = out.stat().st_size
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few human-readable lines about one export."""
    lines = [f"wrote {report['path']} ({report['bytes']:,} bytes, format {report['format']}, "
             f"structure {report['structure']})"]
    if "sparsity_config" in report:
        cfg = report["sparsity_config"]
        lines.append(f"compressed {len(cfg['targets'])} weights, global sparsity {100 * cfg['global_sparsity']:.2f}%")
    if report.get("sparse_initializers") is not None and report["format"] == "onnx":
        lines.append(f"{len(report['sparse_initializers'])} sparse initializers (ONNX Runtime densifies them at load)")
    for layer in report.get("layers", []):
        if "dense_ms" in layer:
            blocked = f" ({layer['block']} columns at a time)" if layer.get("block") else ""
            lines.append(f"  {layer['layer']:<32} {layer['type']:<8} density {layer['density']:.3f}  dense "
                         f"{layer['dense_ms']:.3f} ms  csr {layer['csr_ms']:.3f} ms{blocked}  -> {layer['chosen']}")
        else:
            lines.append(f"  {layer['layer']:<32} -> {layer['chosen']} ({layer.get('reason', '')})")
    return "\n".join(lines)


def report_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2)
