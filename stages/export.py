"""DVC stage `export`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro export` (or `python stages/export.py` from the project root; `lorapipe export` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("export"))
