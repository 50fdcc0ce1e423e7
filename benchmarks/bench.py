"""``python benchmarks/bench.py [options]``: the same as ``python -m loopconv bench [options]``
(see ``--help``), run from this directory of a source checkout."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lcbench.cli import main  # noqa: E402 -- after the path is set

if __name__ == "__main__":
    sys.exit(main(prog="python benchmarks/bench.py"))
