"""DVC stage `evaluate_base`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro evaluate_base` (or `python stages/evaluate_base.py` from the project root; `lorapipe evaluate_base` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_evaluate_base

if __name__ == "__main__":
    run_evaluate_base(load_params())
