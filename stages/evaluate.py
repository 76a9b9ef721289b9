"""DVC stage `evaluate`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro evaluate` (or `python stages/evaluate.py` from the project root; `lorapipe evaluate` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("evaluate"))
