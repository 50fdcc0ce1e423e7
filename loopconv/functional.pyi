# Signatures of loopconv.functional for type checkers (the module itself is unannotated).
from typing import Literal, Sequence, Union

import numpy as np
import numpy.typing as npt

_Int = Union[int, Sequence[int]]
_Pad = Union[int, str, Sequence[int], Sequence[tuple[int, int]]]
_Mode = Literal["zeros", "reflect", "replicate", "circular"]
_Mask = tuple[bool, bool, bool]
_Result = npt.NDArray[np.floating]
_Grads = tuple[_Result | None, _Result | None, _Result | None]

def conv1d(input: npt.ArrayLike, weight: npt.ArrayLike, bias: npt.ArrayLike | None = ...,
           stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ..., groups: int = ...,
           padding_mode: _Mode = ...) -> _Result: ...
def conv1d_input(input_size: Sequence[int], weight: npt.ArrayLike,
                 grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                 dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv1d_weight(input: npt.ArrayLike, weight_size: Sequence[int],
                  grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                  dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv1d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _Mask = ...) -> _Grads: ...
def conv_transpose1d(input: npt.ArrayLike, weight: npt.ArrayLike,
                     bias: npt.ArrayLike | None = ..., stride: _Int = ...,
                     padding: _Pad = ..., output_padding: _Int = ..., groups: int = ...,
                     dilation: _Int = ..., *,
                     output_size: Sequence[int] | None = ...) -> _Result: ...
def conv_transpose1d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _Mask = ...) -> _Grads: ...

def conv2d(input: npt.ArrayLike, weight: npt.ArrayLike, bias: npt.ArrayLike | None = ...,
           stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ..., groups: int = ...,
           padding_mode: _Mode = ...) -> _Result: ...
def conv2d_input(input_size: Sequence[int], weight: npt.ArrayLike,
                 grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                 dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv2d_weight(input: npt.ArrayLike, weight_size: Sequence[int],
                  grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                  dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv2d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _Mask = ...) -> _Grads: ...
def conv_transpose2d(input: npt.ArrayLike, weight: npt.ArrayLike,
                     bias: npt.ArrayLike | None = ..., stride: _Int = ...,
                     padding: _Pad = ..., output_padding: _Int = ..., groups: int = ...,
                     dilation: _Int = ..., *,
                     output_size: Sequence[int] | None = ...) -> _Result: ...
def conv_transpose2d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _Mask = ...) -> _Grads: ...

def conv3d(input: npt.ArrayLike, weight: npt.ArrayLike, bias: npt.ArrayLike | None = ...,
           stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ..., groups: int = ...,
           padding_mode: _Mode = ...) -> _Result: ...
def conv3d_input(input_size: Sequence[int], weight: npt.ArrayLike,
                 grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                 dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv3d_weight(input: npt.ArrayLike, weight_size: Sequence[int],
                  grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                  dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv3d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _Mask = ...) -> _Grads: ...
def conv_transpose3d(input: npt.ArrayLike, weight: npt.ArrayLike,
                     bias: npt.ArrayLike | None = ..., stride: _Int = ...,
                     padding: _Pad = ..., output_padding: _Int = ..., groups: int = ...,
                     dilation: _Int = ..., *,
                     output_size: Sequence[int] | None = ...) -> _Result: ...
def conv_transpose3d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _Mask = ...) -> _Grads: ...
