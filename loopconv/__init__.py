"""loopconv: fast convolutions for NumPy -- forward passes and both gradients, as compiled loops.

1-, 2- and 3-D convolutions and transposed convolutions with every stride, padding (including
asymmetric, 'same' and non-zero padding modes), dilation and grouping, in float32 and float64,
on all cores.  The functions follow ``torch.nn.functional`` and ``torch.nn.grad``; layers with
a ``backward`` method are in `loopconv.nn` (imported with the package, as ``torch.nn`` is).

>>> import numpy as np, loopconv
>>> x = np.arange(25.0).reshape(1, 1, 5, 5)
>>> w = np.ones((1, 1, 2, 2))
>>> loopconv.conv2d(x, w)[0, 0, 0]
array([12., 16., 20., 24.])
"""

__version__ = "0.1.0"

from loopconv import nn
from loopconv._config import get_num_threads, set_num_threads, show_config, threads
from loopconv.functional import (
    conv1d,
    conv1d_backward,
    conv1d_input,
    conv1d_weight,
    conv2d,
    conv2d_backward,
    conv2d_input,
    conv2d_weight,
    conv3d,
    conv3d_backward,
    conv3d_input,
    conv3d_weight,
    conv_transpose1d,
    conv_transpose1d_backward,
    conv_transpose2d,
    conv_transpose2d_backward,
    conv_transpose3d,
    conv_transpose3d_backward,
)

__all__ = [
    "conv1d", "conv1d_backward", "conv1d_input", "conv1d_weight",
    "conv2d", "conv2d_backward", "conv2d_input", "conv2d_weight",
    "conv3d", "conv3d_backward", "conv3d_input", "conv3d_weight",
    "conv_transpose1d", "conv_transpose1d_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "conv_transpose3d", "conv_transpose3d_backward",
    "get_num_threads", "set_num_threads", "show_config", "threads", "nn",
]
