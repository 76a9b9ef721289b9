"""DVC stage `dataset`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro dataset` (or `python stages/dataset.py` from the project root; `lorapipe dataset` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_dataset

if __name__ == "__main__":
    run_dataset(load_params())
