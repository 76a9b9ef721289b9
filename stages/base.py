"""DVC stage `base`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro base` (or `python stages/base.py` from the project root; `lorapipe base` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_base

if __name__ == "__main__":
    run_base(load_params())
