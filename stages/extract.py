"""DVC stage `extract`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro extract` (or `python stages/extract.py` from the project root; `lorapipe extract` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("extract"))
