"""DVC stage `merge`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro merge` (or `python stages/merge.py` from the project root; `lorapipe merge` takes overrides).
"""

from lorapipe.params import load_params
from lorapipe.pipeline import run_merge

if __name__ == "__main__":
    run_merge(load_params())
