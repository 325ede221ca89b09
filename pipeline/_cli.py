"""The command line: ``python -m pipeline demo | bench | soak``.

Each subcommand lives in a module of its own, which adds its arguments and runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: subcommand -> (module, help)
_COMMANDS = {
    "demo": ("pipeline._demo", "run a simulated agent gateway workload and print a summary"),
    "bench": ("pipeline._bench", "run the quick in-process benchmarks and print one table"),
    "soak": ("pipeline._soak", "drive many complete runs and report retained memory"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        if argv and argv[0] == name:
            # Import only the chosen command: the others may need packages it does not.
            module = importlib.import_module(module_name)
            sub.description = module.__doc__
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result
