# The tiled loops compiled for the baseline instruction set (flags in setup.py).
include "tiled.pxi"
