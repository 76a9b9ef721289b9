"""DVC stage `extract`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro extract` (or `python stages/extract.py` from the project root; `lorapipe extract` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_extract

if __name__ == "__main__":
    run_extract(load_params())
