# The tiled loops (loopconv/_loops/tiled.pxi), baseline instruction set.
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

_Triple = tuple[int, int, int]
_Array = npt.NDArray[np.floating]

def info() -> dict[str, Any]: ...
def forward(x: _Array, w: _Array, bias: _Array, y: _Array, stride: _Triple, pad: _Triple,
            dilation: _Triple, groups: int, num_threads: int) -> None: ...
def grad_input(dy: _Array, w: _Array, bias: _Array, dx: _Array, stride: _Triple, pad: _Triple,
               dilation: _Triple, groups: int, num_threads: int) -> None: ...
def grad_weight(x: _Array, dy: _Array, dw: _Array, stride: _Triple, pad: _Triple,
                dilation: _Triple, groups: int, num_threads: int) -> None: ...
def dense(cols: _Array, w: _Array, y: _Array, num_threads: int) -> None: ...
def dense_input(dy: _Array, w: _Array, dx: _Array, num_threads: int) -> None: ...
def dense_weight(x: _Array, dy: _Array, dw: _Array, num_threads: int) -> None: ...
def stream_forward(x: _Array, w: _Array, bias: _Array, y: _Array, num_threads: int) -> None: ...
def head_weight(x: _Array, dy: _Array, dw: _Array, num_threads: int) -> None: ...
def item_order(nblk: Sequence[int]) -> npt.NDArray[np.intp]: ...  # internal: the work items
def block_starts(nblk: Sequence[int]) -> npt.NDArray[np.intp]: ...  # internal: the same
def uses_pixel_tiles(which: str, xshape: Sequence[int], wshape: Sequence[int],
                     yshape: Sequence[int], stride: _Triple, pad: _Triple, dilation: _Triple,
                     groups: int, itemsize: int) -> bool: ...  # internal: which tiles
def product_plan(which: str, xshape: Sequence[int], wshape: Sequence[int],
                 yshape: Sequence[int], stride: _Triple, pad: _Triple, dilation: _Triple,
                 groups: int, itemsize: int) -> dict[str, Any]: ...  # internal: work items
def grid_waste(which: str, xshape: Sequence[int], wshape: Sequence[int],
               yshape: Sequence[int], stride: _Triple, pad: _Triple, dilation: _Triple,
               groups: int, itemsize: int) -> float: ...  # internal: junk of the grids
def padding_share(which: int, xs: tuple[int, ...], ws: tuple[int, ...], ys: tuple[int, ...],
                  stride: _Triple, pad: _Triple,
                  dilation: _Triple) -> float: ...  # internal: pairs that read padding
def weight_plan(xs: Sequence[int], ws: Sequence[int], ys: Sequence[int], stride: _Triple,
                pad: _Triple, dilation: _Triple, groups: int,
                itemsize: int) -> dict[str, Any]: ...  # internal: the reduction's steps
def weight_blocks_shared(xs: Sequence[int], ws: Sequence[int], ys: Sequence[int],
                         stride: _Triple, pad: _Triple, dilation: _Triple, groups: int,
                         itemsize: int) -> bool: ...  # internal: staged once before the items

# The depthwise loops (loopconv/_loops/depthwise.pxi): few channels per group.
def dw_suits(cin_per_group: int, cout_per_group: int, pixels: int, strided: bool,
             which: int) -> bool: ...
def dw_forward(x: _Array, w: _Array, bias: _Array, y: _Array, stride: _Triple, pad: _Triple,
               dilation: _Triple, groups: int, num_threads: int) -> None: ...
def dw_grad_input(dy: _Array, w: _Array, bias: _Array, dx: _Array, stride: _Triple,
                  pad: _Triple, dilation: _Triple, groups: int, num_threads: int) -> None: ...
def dw_grad_weight(x: _Array, dy: _Array, dw: _Array, stride: _Triple, pad: _Triple,
                   dilation: _Triple, groups: int, num_threads: int) -> None: ...
def dw_plan(which: int, xs: Sequence[int], ws: Sequence[int], ys: Sequence[int],
            stride: _Triple, pad: _Triple, dilation: _Triple, groups: int,
            itemsize: int) -> dict[str, Any]: ...  # internal: how a pass runs
