"""``acdc report RUN_DIR [RUN_DIR ...] --out DIR``: figures + Markdown/HTML report of training runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="figures and a Markdown/HTML report of one or more run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="directories written by `acdc train`")
    p.add_argument("--out", required=True, help="output directory (report.md, report.html, *.png)")
    p.add_argument("--agreement", action="store_true",
                   help="compute dense-vs-sparse agreement for runs with both models (loads their validation data)")
    p.add_argument("--device", default=None, help="device for --agreement (default: the recipe's)")
    p.add_argument("--figures", default=None, metavar="NAMES",
                   help="comma-separated subset of figures: accuracy, mask_difference, inference_flops, "
                        "training_flops, layer_density, memorization (default: all that have data)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..report import build_report
    from . import check_out_folder

    check_out_folder(args.out)

    figs = None if args.figures is None else [f.strip() for f in args.figures.split(",") if f.strip()]
    res = build_report(args.run_dirs, args.out, agreement=args.agreement, device=args.device, figures=figs)
    print(f"wrote {args.out}/report.md, {args.out}/report.html and {len(res['figures'])} figures: "
          + ", ".join(res["figures"]))
    return 0
