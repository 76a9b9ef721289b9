"""DVC stage `evaluate_base`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro evaluate_base` (or `python stages/evaluate_base.py` from the project root; `lorapipe evaluate_base` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("evaluate_base"))
