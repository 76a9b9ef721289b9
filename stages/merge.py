"""DVC stage `merge`: see the stage table in README.md for its inputs and outputs.

Run: `dvc repro merge` (or `python stages/merge.py` from the project root; `lorapipe merge` takes overrides).
"""

import sys

from lorapipe.pipeline import main

if __name__ == "__main__":
    sys.exit(main("merge"))
