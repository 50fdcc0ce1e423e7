# The tiled loops compiled for x86_64_v3: the same functions as the baseline build.
from loopconv._loops.tiled_baseline import dense as dense
from loopconv._loops.tiled_baseline import dense_input as dense_input
from loopconv._loops.tiled_baseline import dense_weight as dense_weight
from loopconv._loops.tiled_baseline import dw_forward as dw_forward
from loopconv._loops.tiled_baseline import dw_grad_input as dw_grad_input
from loopconv._loops.tiled_baseline import dw_grad_weight as dw_grad_weight
from loopconv._loops.tiled_baseline import dw_plan as dw_plan
from loopconv._loops.tiled_baseline import dw_suits as dw_suits
from loopconv._loops.tiled_baseline import forward as forward
from loopconv._loops.tiled_baseline import grad_input as grad_input
from loopconv._loops.tiled_baseline import grad_weight as grad_weight
from loopconv._loops.tiled_baseline import grid_waste as grid_waste
from loopconv._loops.tiled_baseline import info as info
from loopconv._loops.tiled_baseline import item_order as item_order
from loopconv._loops.tiled_baseline import product_plan as product_plan
from loopconv._loops.tiled_baseline import uses_pixel_tiles as uses_pixel_tiles
from loopconv._loops.tiled_baseline import weight_plan as weight_plan
