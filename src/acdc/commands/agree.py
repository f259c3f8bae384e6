"""``acdc agree MODEL_A MODEL_B``: sample-level agreement of two models on a validation split (paper Table 14)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..train.agree import agree_models

__all__ = ["format_agreement", "register"]


def format_agreement(res: dict[str, Any]) -> str:
    """A plain-text table of one agreement result."""

    def pct(v: Any) -> str:
        return "n/a" if v is None else f"{100 * float(v):7.3f}%"

    rows = [
        ("model A", res.get("model_a", "A")),
        ("model B", res.get("model_b", "B")),
        ("samples", str(res["n"])),
        ("top-1 agreement", pct(res["agreement"])),
        ("cross-entropy H(p_A, p_B)", f"{res['cross_entropy_ab']:.5f} nats"),
        ("cross-entropy H(p_B, p_A)", f"{res['cross_entropy_ba']:.5f} nats"),
        ("entropy A / B", f"{res['entropy_a']:.5f} / {res['entropy_b']:.5f} nats"),
        ("KL(p_A || p_B)", f"{res['kl_ab']:.5f} nats"),
        ("accuracy A", pct(res.get("acc_a"))),
        ("accuracy B", pct(res.get("acc_b"))),
        ("both right", pct(res.get("both_right"))),
        ("only A right", pct(res.get("only_a_right"))),
        ("only B right", pct(res.get("only_b_right"))),
        ("both wrong, same class", pct(res.get("both_wrong_same"))),
        ("both wrong, different class", pct(res.get("both_wrong_different"))),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("agree", help="top-1 agreement / cross-entropy of two models on the validation split")
    p.add_argument("model_a", help="reference model .safetensors (e.g. RUN/dense.safetensors)")
    p.add_argument("model_b", help="compared model .safetensors (e.g. RUN/sparse.safetensors)")
    p.add_argument("--data", default=None,
                   help="dataset name (mnist5k), YAML/JSON data block or file (default: the recipe's data)")
    p.add_argument("--recipe", default=None,
                   help="recipe giving the architecture (default: recipe.yaml in MODEL_A's directory)")
    p.add_argument("--json-out", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--device", default=None, help="cpu | cuda | auto (default: the recipe's)")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size (default: the recipe's)")
    p.set_defaults(func=cmd_agree)


def cmd_agree(args: argparse.Namespace) -> int:
    from ..train.checkpoint import atomic_write_text
    from . import check_out_file

    if args.json_out:
        check_out_file(args.json_out, "--json-out")  # before the models and data are loaded
    res = agree_models(args.model_a, args.model_b, recipe=args.recipe, data=args.data, device=args.device,
                       batch_size=args.batch_size)
    print(format_agreement(res))
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(res, indent=2, allow_nan=False))
    return 0
