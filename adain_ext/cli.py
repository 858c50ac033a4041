"""The `adain-ext` console script: a table of subcommands, each a `main(argv) -> int`.

(Minimal version from the style-transfer branch; the lead's version adds `bench`.)
"""
from __future__ import annotations

import sys


def _subcommands() -> dict:
    from adain_ext.style_transfer.cli import SUBCOMMANDS

    return dict(SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    table = _subcommands()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in table:
        lines = [f"  {name:<9} {help_}" for name, (_, help_) in table.items()]
        print("usage: adain-ext <command> [options]\n\ncommands:\n" + "\n".join(lines),
              file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"adain-ext: error: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0 if argv else 2
    return table[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
