"""Write docs/options.md: every ExplanationMonitor option, generated from the option specs.

    python tools/options_table.py            # rewrite docs/options.md
    python tools/options_table.py --check    # exit 1 when docs/options.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning_xai.callbacks._options_table import options_markdown

TARGET = Path(__file__).resolve().parents[1] / "docs" / "options.md"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    args = parser.parse_args()
    text = options_markdown()
    if args.check:
        ok = TARGET.exists() and TARGET.read_text() == text
        print("docs/options.md is up to date" if ok else "docs/options.md is out of date: run tools/options_table.py")
        return 0 if ok else 1
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
