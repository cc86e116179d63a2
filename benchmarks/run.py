#!/usr/bin/env python
"""Run exitflow's benchmarks and print one JSON object per benchmark, one per line.

    .venv/bin/python benchmarks/run.py            # all of them
    .venv/bin/python benchmarks/run.py boards     # only the named ones

Every ``benchmarks/<name>.py`` with a ``run()`` function is the benchmark ``<name>``; ``run``
returns a dict of figures, or a list of them (one per case, e.g. per data set), each printed as
``{"name": "<name>", ...figures}``. Speed figures are ratios against
a baseline measured in the same run, so they compare across machines.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> dict[str, Path]:
    """The benchmarks: every module here with a top-level ``run()`` (others, such as the model
    of ``vgg_chain.py``, are what benchmarks use)."""
    return {
        p.stem: p
        for p in sorted(HERE.glob("*.py"))
        if p.stem not in ("run", "__init__") and not p.stem.startswith("_") and "\ndef run(" in p.read_text()
    }


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"exitflow_benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    args = parser.parse_args(argv)
    known = available()
    unknown = [n for n in args.names if n not in known]
    if unknown:
        print(f"benchmarks/run.py: error: unknown benchmark {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    for name in args.names or list(known):
        figures = load(name, known[name]).run()
        for row in figures if isinstance(figures, list) else [figures]:
            print(json.dumps({"name": name, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
