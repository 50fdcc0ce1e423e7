# Signatures of loopconv.functional for type checkers (the module itself is unannotated).
from collections.abc import Sequence
from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from loopconv._loops import Plan
from loopconv._problem import Problem

__all__ = [
    "conv1d", "conv1d_input", "conv1d_weight", "conv1d_backward", "conv_transpose1d",
    "conv_transpose1d_backward", "conv2d", "conv2d_input", "conv2d_weight", "conv2d_backward",
    "conv_transpose2d", "conv_transpose2d_backward", "conv3d", "conv3d_input", "conv3d_weight",
    "conv3d_backward", "conv_transpose3d", "conv_transpose3d_backward",
]

_Int = int | Sequence[int]
_Pad = int | str | Sequence[int] | Sequence[tuple[int, int]]
_Mode = Literal["zeros", "reflect", "replicate", "circular"]
_Mask = tuple[bool, bool, bool]
_All = tuple[Literal[True], Literal[True], Literal[True]]
_Result = npt.NDArray[np.floating]
_Grads = tuple[_Result | None, _Result | None, _Result | None]
_AllGrads = tuple[_Result, _Result, _Result]

def conv1d(input: npt.ArrayLike, weight: npt.ArrayLike, bias: npt.ArrayLike | None = ...,
           stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ..., groups: int = ...,
           padding_mode: _Mode = ...) -> _Result: ...
def conv1d_input(input_size: Sequence[int], weight: npt.ArrayLike,
                 grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                 dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv1d_weight(input: npt.ArrayLike, weight_size: Sequence[int],
                  grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                  dilation: _Int = ..., groups: int = ...) -> _Result: ...
@overload  # the default output_mask: all three gradients
def conv1d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _All = ...) -> _AllGrads: ...
@overload
def conv1d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _Mask) -> _Grads: ...
def conv_transpose1d(input: npt.ArrayLike, weight: npt.ArrayLike,
                     bias: npt.ArrayLike | None = ..., stride: _Int = ...,
                     padding: _Pad = ..., output_padding: _Int = ..., groups: int = ...,
                     dilation: _Int = ..., *,
                     output_size: Sequence[int] | None = ...) -> _Result: ...
@overload  # the default output_mask: all three gradients
def conv_transpose1d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _All = ...) -> _AllGrads: ...
@overload
def conv_transpose1d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _Mask) -> _Grads: ...

def conv2d(input: npt.ArrayLike, weight: npt.ArrayLike, bias: npt.ArrayLike | None = ...,
           stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ..., groups: int = ...,
           padding_mode: _Mode = ...) -> _Result: ...
def conv2d_input(input_size: Sequence[int], weight: npt.ArrayLike,
                 grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                 dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv2d_weight(input: npt.ArrayLike, weight_size: Sequence[int],
                  grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                  dilation: _Int = ..., groups: int = ...) -> _Result: ...
@overload  # the default output_mask: all three gradients
def conv2d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _All = ...) -> _AllGrads: ...
@overload
def conv2d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _Mask) -> _Grads: ...
def conv_transpose2d(input: npt.ArrayLike, weight: npt.ArrayLike,
                     bias: npt.ArrayLike | None = ..., stride: _Int = ...,
                     padding: _Pad = ..., output_padding: _Int = ..., groups: int = ...,
                     dilation: _Int = ..., *,
                     output_size: Sequence[int] | None = ...) -> _Result: ...
@overload  # the default output_mask: all three gradients
def conv_transpose2d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _All = ...) -> _AllGrads: ...
@overload
def conv_transpose2d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _Mask) -> _Grads: ...

def conv3d(input: npt.ArrayLike, weight: npt.ArrayLike, bias: npt.ArrayLike | None = ...,
           stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ..., groups: int = ...,
           padding_mode: _Mode = ...) -> _Result: ...
def conv3d_input(input_size: Sequence[int], weight: npt.ArrayLike,
                 grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                 dilation: _Int = ..., groups: int = ...) -> _Result: ...
def conv3d_weight(input: npt.ArrayLike, weight_size: Sequence[int],
                  grad_output: npt.ArrayLike, stride: _Int = ..., padding: _Pad = ...,
                  dilation: _Int = ..., groups: int = ...) -> _Result: ...
@overload  # the default output_mask: all three gradients
def conv3d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _All = ...) -> _AllGrads: ...
@overload
def conv3d_backward(input: npt.ArrayLike, weight: npt.ArrayLike, grad_output: npt.ArrayLike,
                    stride: _Int = ..., padding: _Pad = ..., dilation: _Int = ...,
                    groups: int = ..., padding_mode: _Mode = ..., *,
                    output_mask: _Mask) -> _Grads: ...
def conv_transpose3d(input: npt.ArrayLike, weight: npt.ArrayLike,
                     bias: npt.ArrayLike | None = ..., stride: _Int = ...,
                     padding: _Pad = ..., output_padding: _Int = ..., groups: int = ...,
                     dilation: _Int = ..., *,
                     output_size: Sequence[int] | None = ...) -> _Result: ...
@overload  # the default output_mask: all three gradients
def conv_transpose3d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _All = ...) -> _AllGrads: ...
@overload
def conv_transpose3d_backward(input: npt.ArrayLike, weight: npt.ArrayLike,
                              grad_output: npt.ArrayLike, stride: _Int = ...,
                              padding: _Pad = ..., output_padding: _Int = ...,
                              groups: int = ..., dilation: _Int = ..., *,
                              output_mask: _Mask) -> _Grads: ...

# The checking paths, problems and plans that the layers of loopconv.nn share (not public).
_Plan = Plan | None
def _signature(a: Any, b: Any, c: Any) -> tuple[Any, ...] | None: ...
def _plan_of(problem: Problem) -> _Plan: ...
def _conv_checked(fn: str, nd: int, input: Any, weight: Any, bias: Any, stride: Any,
                  padding: Any, dilation: Any, groups: Any,
                  padding_mode: Any) -> tuple[_Result, Problem, _Plan]: ...
def _conv_run(fn: str, problem: Problem, x: Any, w: Any, b: Any) -> _Result: ...
def _planned_backward(plan: Plan, x: Any, w: Any, gy: Any, mask: Any) -> _Grads: ...
def _conv_backward_checked(fn: str, nd: int, input: Any, weight: Any, grad_output: Any,
                           stride: Any, padding: Any, dilation: Any, groups: Any,
                           padding_mode: Any, output_mask: Any,
                           problem: Problem | None = ...) -> tuple[_Grads, _Plan]: ...
def _conv_transpose_checked(fn: str, nd: int, input: Any, weight: Any, bias: Any, stride: Any,
                            padding: Any, output_padding: Any, groups: Any, dilation: Any,
                            output_size: Any) -> tuple[_Result, Problem, _Plan]: ...
def _conv_transpose_run(fn: str, problem: Problem, x: Any, w: Any, b: Any) -> _Result: ...
def _planned_transpose_backward(plan: Plan, x: Any, w: Any, gy: Any, mask: Any) -> _Grads: ...
def _conv_transpose_backward_checked(fn: str, nd: int, input: Any, weight: Any,
                                     grad_output: Any, stride: Any, padding: Any,
                                     output_padding: Any, groups: Any, dilation: Any,
                                     output_mask: Any,
                                     problem: Problem | None = ...) -> tuple[_Grads, _Plan]: ...
