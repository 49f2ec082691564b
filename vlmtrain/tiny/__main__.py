"""CLI: `python -m vlmtrain.tiny <family> <out_dir> [--with-model] [--templates-root DIR]`
or `python -m vlmtrain.tiny shapes <out_dir> [--rows N] [--seed S]`."""

from __future__ import annotations

import argparse
import sys

from vlmtrain.errors import VlmtrainError

from .build import TINY_FAMILIES, build_tiny
from .shapes import make_shapes_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vlmtrain.tiny", description=__doc__)
    parser.add_argument("what", choices=[*TINY_FAMILIES, "shapes"], help="a model family, or 'shapes'")
    parser.add_argument("out_dir")
    parser.add_argument("--with-model", action="store_true", help="also save random tiny weights")
    parser.add_argument("--templates-root", default=None, help="folder of <family>/chat_template.jinja")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=48, help="dataset rows (shapes only)")
    args = parser.parse_args(argv)

    try:
        if args.what == "shapes":
            print(make_shapes_dataset(args.out_dir, rows=args.rows, seed=args.seed))
        else:
            print(build_tiny(args.what, args.out_dir, with_model=args.with_model,
                             templates_root=args.templates_root, seed=args.seed))
    except (VlmtrainError, ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
