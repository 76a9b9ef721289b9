"""DVC stage `train`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro train` (or `python stages/train.py` from the project root; `lorapipe train` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_train

if __name__ == "__main__":
    run_train(load_params())
