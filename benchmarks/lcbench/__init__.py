"""The benchmark behind ``python -m loopconv bench``: loopconv against NumPy im2col, PyTorch
and ONNX Runtime, on standard layer shapes and on the convolutions of whole networks.

It is not part of the installed package.  From a source checkout, run it as
``python -m loopconv bench [options]`` or ``python benchmarks/bench.py [options]``.

- `core`: the shapes, the worker processes (one per library), the timing, tables and JSON;
- `networks`: the convolution layers of well-known networks (``--suite networks``);
- `im2col`: the NumPy peer, 2-D convolutions by im2col and BLAS;
- `cli`: the options.
"""
