"""The `impasto` command: a table of subcommands, each imported only when it runs.

Subcommands are named by module, as Celery tasks are named by string: the web tier's
commands need no torch, and this module imports no tier.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module with a main(argv) -> int, one-line summary)
COMMANDS = {
    "stylize": ("worker.cli", "paint a photo in the style of one or more paintings"),
}


def usage() -> str:
    lines = ["usage: impasto COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run 'impasto COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"impasto: unknown command {name!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
