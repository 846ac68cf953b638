"""The ``taskvec`` command line: ``taskvec --help`` lists the subcommands."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

EPILOG = """examples:
  taskvec demo                                  # 5-shot vs 0-shot and a logit-lens summary on gemma-3-270m
  taskvec models                                # embedded models and supported architectures
  taskvec lens "Q:France\\nA:Paris\\n\\nQ:Japan\\nA:" --top-k 3
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.model, args.task, n_queries=args.n, n_shots=args.shots, seed=args.seed)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .architectures import ARCHITECTURES
    from .loading import list_models

    print("embedded models (no download needed):")
    for m in list_models():
        print(f"  {m['name']:<20} {m['description']}")
    print("\nsupported architectures (config.model_type), for any hub id or local folder:")
    print("  text: " + ", ".join(k for k, a in ARCHITECTURES.items() if not a.is_vlm))
    print("  vision-language: " + ", ".join(k for k, a in ARCHITECTURES.items() if a.is_vlm))
    return 0


def _cmd_lens(args: argparse.Namespace) -> int:
    from .lens import lens
    from .loading import load

    model = load(args.model)
    prompts = [p.encode().decode("unicode_escape") for p in args.prompts]
    result = lens(model, prompts, top_k=args.top_k, position=args.position)
    table = result.df.assign(token=result.df.token.map(repr))
    wide = table.pivot_table(index=["prompt", "layer"], columns="rank", values="token", aggfunc="first")
    print(wide.to_string())
    if args.out:
        result.df.to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``taskvec`` command."""
    parser = argparse.ArgumentParser(
        prog="taskvec", description="Task vectors in LLMs and VLMs.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="5-shot vs 0-shot accuracy and a logit-lens summary on one task",
                       epilog="example: taskvec demo --task country-capital -n 50",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m", help="embedded name, hub id or local folder")
    p.add_argument("--task", default="country-capital", help="built-in task name")
    p.add_argument("-n", type=int, default=50, help="test queries (default 50)")
    p.add_argument("--shots", type=int, default=5, help="demonstrations per prompt (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("models", help="list embedded models and supported architectures")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("lens", help="logit lens of prompts: top-k tokens per layer",
                       epilog='example: taskvec lens "Q:France\\nA:Paris\\n\\nQ:Japan\\nA:" --out lens.csv',
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompts", nargs="+", help="prompt texts (\\n escapes are understood)")
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--position", type=int, default=-1, help="token position (default -1, the last)")
    p.add_argument("--out", help="write the tidy table as CSV here")
    p.set_defaults(func=_cmd_lens)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taskvec`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from .errors import TaskvecError

    try:
        return args.func(args)
    except TaskvecError as err:
        print(f"taskvec: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
