"""python -m loopconv: see loopconv/_cli.py."""

import sys

from loopconv._cli import main

sys.exit(main())
