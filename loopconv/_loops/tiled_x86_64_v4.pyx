# The tiled loops compiled for the x86_64_v4 instruction set (flags in setup.py).
include "tiled.pxi"
