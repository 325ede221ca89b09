"""The trio-agent-bus command line: python -m pipeline demo | serve.

Run "python -m pipeline COMMAND --help" for what one command does and its
options.
"""

# Each subcommand lives in a module of its own, which adds its arguments and runs it. The
# module's docstring is the command's --help description: plain text of paragraphs, each line
# at most 79 columns, printed as written (RawDescriptionHelpFormatter). Benchmarks and the
# memory soak are not commands of the library: they live in benchmarks/ of the repository.

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: subcommand -> (module, help)
_COMMANDS = {
    "demo": ("pipeline._demo", "run a simulated agent gateway workload and print a summary"),
    "serve": ("pipeline._serve", "serve the bus to UI and chat clients (WebSocket, SSE, AG-UI)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description=__doc__, formatter_class=formatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in _COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, formatter_class=formatter)
        if argv and argv[0] == name:
            # Import only the chosen command: the others may need packages it does not.
            module = importlib.import_module(module_name)
            sub.description = module.__doc__
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result
