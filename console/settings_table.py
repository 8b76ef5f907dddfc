"""``python -m console.settings_table``: prints the README's table of the
console's settings, or rewrites it in a README with ``--write-readme``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from console._settings import markdown_table, with_markdown_table


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the table, or rewrites the one in ``--write-readme``; returns 0."""
    parser = argparse.ArgumentParser(
        prog="python -m console.settings_table", description="The README's console settings table."
    )
    parser.add_argument("--write-readme", type=Path, metavar="README", help="rewrite its table")
    args = parser.parse_args(argv)
    if args.write_readme is None:
        sys.stdout.write(markdown_table())
        return 0
    readme: Path = args.write_readme
    readme.write_text(with_markdown_table(readme.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
