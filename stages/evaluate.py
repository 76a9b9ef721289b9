"""DVC stage `evaluate`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro evaluate` (or `python stages/evaluate.py` from the project root; `lorapipe evaluate` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_evaluate

if __name__ == "__main__":
    run_evaluate(load_params())
