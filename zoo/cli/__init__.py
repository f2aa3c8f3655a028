"""The one `zoo` command line: a thin caller of the package API.

Each feature keeps its subcommands in a module of this package exposing `register(subparsers)`; the
module's handlers raise `ZooError`s, which `main` prints as one line before exiting with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from zoo.errors import ZooError

# Order is the order of `zoo --help`.
COMMAND_MODULES = (
    "zoo.cli.codec_cmds",  # encode, decode, info
    "zoo.cli.hub_cmds",  # list, publish, import-compressai, hub
    "zoo.cli.train_cmds",  # train, release
    "zoo.cli.eval_cmds",  # eval, bench, bd
    "zoo.cli.compare_cmds",  # compare
    "zoo.cli.export_cmds",  # export
    "zoo.cli.serve_cmds",  # archive, serve
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="Learned image compression model zoo.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # that feature is not part of this build
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ZooError as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
