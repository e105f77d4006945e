"""python -m iotwasm.toolchain.componentize LANG PROJECT [-o OUT]: build a project into a component."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...errors import IotwasmError
from . import BUILDERS, build


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iotwasm.toolchain.componentize", description=__doc__)
    p.add_argument("language", choices=sorted(BUILDERS))
    p.add_argument("project", type=Path)
    p.add_argument("-o", "--out", type=Path, default=None)
    p.add_argument("--cache", type=Path, default=None, help="build cache directory")
    args = p.parse_args(argv)
    try:
        out = build(args.language, args.project, out=args.out, cache_dir=args.cache)
    except IotwasmError as e:
        print(f"build: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
