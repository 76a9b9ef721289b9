"""DVC stage `dataset`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro dataset` (or `python stages/dataset.py` from the project root; `lorapipe dataset` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("dataset"))
