"""DVC stage `train`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro train` (or `python stages/train.py` from the project root; `lorapipe train` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("train"))
