"""DVC stage `base`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro base` (or `python stages/base.py` from the project root; `lorapipe base` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("base"))
