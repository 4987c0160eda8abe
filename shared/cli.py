"""The `impasto` command: it runs the subcommands that the installed tiers register.

Each tier declares its subcommands in pyproject.toml's "impasto.commands" entry points
(`stylize = "worker.cli:main"`), so this module names no tier and imports one only when its
subcommand runs: a web-only machine runs `impasto web` without torch installed.
"""

from __future__ import annotations

import sys
from importlib.metadata import EntryPoint, entry_points

GROUP = "impasto.commands"


def commands() -> dict[str, EntryPoint]:
    return {entry.name: entry for entry in entry_points(group=GROUP)}


def usage(available: dict[str, EntryPoint]) -> str:
    lines = ["usage: impasto COMMAND [ARGS ...]", "", "commands:"]
    for name, entry in sorted(available.items()):
        summary = (entry.load().__doc__ or "").strip().splitlines()[0:1]
        lines.append(f"  {name:<10} {''.join(summary)}")
    lines += ["", "Run 'impasto COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    available = commands()
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(available), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in available:
        known = ", ".join(sorted(available)) or "none (is impasto installed with pip install -e .?)"
        print(f"impasto: unknown command {name!r}; commands: {known}", file=sys.stderr)
        return 2
    return available[name].load()(rest)


if __name__ == "__main__":
    sys.exit(main())
