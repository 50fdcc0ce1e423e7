"""python -m loopconv: see loopconv/_cli.py."""

import sys

from loopconv._cli import main

if __name__ == "__main__":
    sys.exit(main())
