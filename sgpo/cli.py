"""The `sgpo` command line: one entry point, one subcommand per stage of the workflow.

Each subcommand lives beside the code it drives and exposes ``register(subparsers)``;
modules are imported lazily so `sgpo --help` stays fast and a missing optional
dependency of one stage never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# subcommand -> module providing ``register(subparsers)``
SUBCOMMANDS: dict[str, str] = {
    "train": "sgpo.trainer.cli",
    "extract": "sgpo.strategies.cli",
    "score-strategies": "sgpo.strategies.cli",
    "eval": "sgpo.evaluation.cli",
    "report": "sgpo.evaluation.cli",
    "demo": "sgpo.demo.cli",
    "world": "sgpo.world.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sgpo",
        description="Strategy-Guided Policy Optimization: extract strategies, train, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    import sgpo.world  # noqa: F401  (the testbed registers its model alias, strategy-world, with sgpo.models)
    from sgpo.errors import Interrupted, UserError

    try:
        return int(args.func(args) or 0)
    except Interrupted as e:  # stopped on a signal after saving: say where, exit 128 + signal
        print(f"sgpo {args.command}: {_one_line(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:  # anything the user can cause: one line, no traceback, exit 2 (like argparse)
        print(f"sgpo {args.command}: {_one_line(str(e))}", file=sys.stderr)
        return 2


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
