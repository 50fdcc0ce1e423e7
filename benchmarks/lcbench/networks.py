"""The convolution layers of well-known networks, for ``python -m loopconv bench --suite
networks``.

Each network is the list of its distinct convolution layers, each with the number of times it
occurs, as written out from the published architecture (the variant and input size are given
with each builder below).  Only convolutions are listed: pooling, normalisation, activations
and fully connected layers are not.  One training step of a network's convolutions is the
forward pass, the input gradient and the weight gradient of every layer, so its time is
``sum(count * (forward + input + weight))`` over the layers, except that the input gradient of
a network's first layer (the gradient with respect to the image, the audio or the latent
vector) is not needed in training: that layer has ``input_grad=False``, and its input
gradient is neither timed nor counted.

The layers are traced along the network by `_Trace`, which follows the channels and spatial
size from layer to layer, so that each layer's input is what the previous ones produce.
Identical layers (same geometry, same passes) are merged into one entry with their count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lcbench.core import Shape


@dataclass(frozen=True)
class Layer:
    """A distinct convolution layer of a network: its geometry (a `Shape` of batch 1), the
    number of times it occurs in the network, and whether its input gradient is needed."""

    name: str
    count: int
    shape: Shape
    input_grad: bool = True

    @property
    def passes(self) -> tuple:
        """The passes of a training step: forward, input and weight (no input gradient for a
        network's first layer)."""
        return ("forward", "input", "weight") if self.input_grad else ("forward", "weight")

    def at(self, batch: int, name: str) -> Shape:
        """The layer's geometry at batch size `batch`, as a `Shape` called `name`."""
        return replace(self.shape, n=batch, name=name)

    def geometry(self) -> str:
        """A short description, e.g. ``256->512 3x3 s2 @14x14``."""
        s = self.shape
        kernel = "x".join([str(s.k)] * s.ndim)
        text = f"{s.c}->{s.o} {'T' if s.transposed else ''}{kernel}"
        text += f" s{s.stride}" if s.stride > 1 else ""
        text += f" g{s.groups}" if s.groups > 1 else ""
        text += f" d{s.dilation}" if s.dilation > 1 else ""
        return text + " @" + "x".join(map(str, s.spatial))


@dataclass(frozen=True)
class Network:
    """A network's convolution layers, the family it stands for, the variant and input size
    they were written from, and a batch size typical of training it."""

    name: str
    family: str
    variant: str
    train_batch: int
    layers: tuple

    @property
    def convolutions(self) -> int:
        """The number of convolution layers in the network (the counts added up)."""
        return sum(layer.count for layer in self.layers)


def _conv(c, o, size, k, stride=1, padding=0, groups=1, transposed=False, output_padding=0):
    """A `Shape` of batch 1 and input size `size` (1, 2 or 3 spatial axes)."""
    d, h, w = (0,) * (3 - len(size)) + tuple(size)
    return Shape("", 1, c, h, w, o, k, stride, padding, 1, groups, d=d, transposed=transposed,
                 output_padding=output_padding)


class _Trace:
    """Records a network's convolutions in order; `conv` returns the output's spatial size,
    so that a builder passes each layer's output on to the next."""

    def __init__(self) -> None:
        self.layers: list[Layer] = []

    def conv(self, name, c, o, size, k, stride=1, padding=None, groups=1, first=False,
             transposed=False, output_padding=0, dilation=1) -> tuple:
        if padding is None:     # "same" for odd kernels at stride 1
            padding = 0 if transposed else (k - 1) // 2 * dilation
        shape = replace(_conv(c, o, size, k, stride, padding, groups, transposed,
                              output_padding), dilation=dilation)
        self.layers.append(Layer(name, 1, shape, input_grad=not first))
        return shape.output_shape[2:]

    def merged(self) -> tuple:
        """The layers, identical ones merged into the first with the sum of their counts."""
        distinct: dict[tuple, Layer] = {}
        for layer in self.layers:
            key = (layer.shape, layer.input_grad)
            seen = distinct.get(key)
            distinct[key] = layer if seen is None else replace(seen, count=seen.count + 1)
        return tuple(distinct.values())


def _pool(size, k=2, stride=2, padding=0) -> tuple:
    """The spatial size after a max pooling of window `k`."""
    return tuple((s + 2 * padding - k) // stride + 1 for s in size)


# ---------------------------------------------------------------------------------------------
# Image classifiers: ResNet and ResNeXt

def _resnet(blocks, bottleneck, groups=1, width_per_group=64, size=224) -> tuple:
    """ResNet (He et al. 2016) as in torchvision: the stride of a downsampling bottleneck on
    its 3x3 convolution (ResNet v1.5), a 1x1 strided projection on the shortcut where the shape
    changes; ResNeXt (Xie et al. 2017) is the bottleneck with grouped 3x3 convolutions of
    ``width_per_group`` channels per group."""
    net = _Trace()
    hw = net.conv("conv1", 3, 64, (size, size), 7, 2, first=True)
    hw, c = _pool(hw, 3, 2, 1), 64
    for stage, (count, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            name = f"layer{stage + 1}.{block}"
            if bottleneck:
                width, out = planes * width_per_group // 64 * groups, planes * 4
                t = net.conv(f"{name}.conv1", c, width, hw, 1)
                t = net.conv(f"{name}.conv2", width, width, t, 3, stride, groups=groups)
                t = net.conv(f"{name}.conv3", width, out, t, 1)
            else:
                out = planes
                t = net.conv(f"{name}.conv1", c, out, hw, 3, stride)
                t = net.conv(f"{name}.conv2", out, out, t, 3)
            if stride > 1 or c != out:
                net.conv(f"{name}.downsample", c, out, hw, 1, stride)
            c, hw = out, t
    return net.merged()


# ---------------------------------------------------------------------------------------------
# Depthwise separable: MobileNetV2 and EfficientNet-B0

def _mobilenet_v2(size=224) -> tuple:
    """MobileNetV2 (Sandler et al. 2018), width 1.0, as in torchvision: inverted residual
    blocks (1x1 expansion by t, 3x3 depthwise, 1x1 projection) with the paper's (t, c, n, s)
    table, a 3x3 stride-2 stem and a 1x1 head to 1280 channels."""
    net = _Trace()
    hw, c = net.conv("stem", 3, 32, (size, size), 3, 2, first=True), 32
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]
    index = 1
    for t, out, count, s in table:
        for i in range(count):
            hidden, name = c * t, f"block{index}"
            if t != 1:
                net.conv(f"{name}.expand", c, hidden, hw, 1)
            hw = net.conv(f"{name}.depthwise", hidden, hidden, hw, 3, s if i == 0 else 1,
                          groups=hidden)
            net.conv(f"{name}.project", hidden, out, hw, 1)
            c, index = out, index + 1
    net.conv("head", c, 1280, hw, 1)
    return net.merged()


def _efficientnet_b0(size=224) -> tuple:
    """EfficientNet-B0 (Tan and Le 2019) as in torchvision: MBConv blocks (1x1 expansion,
    k x k depthwise, squeeze-and-excitation as two 1x1 convolutions on the pooled 1x1 map with
    a quarter of the block's input channels, 1x1 projection), the paper's stage table, a 3x3
    stride-2 stem and a 1x1 head to 1280 channels."""
    net = _Trace()
    hw, c = net.conv("stem", 3, 32, (size, size), 3, 2, first=True), 32
    # (expansion, kernel, stride, output channels, blocks)
    table = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
             (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]
    index = 1
    for t, k, s, out, count in table:
        for i in range(count):
            hidden, name, squeeze = c * t, f"block{index}", max(1, c // 4)
            if t != 1:
                net.conv(f"{name}.expand", c, hidden, hw, 1)
            hw = net.conv(f"{name}.depthwise", hidden, hidden, hw, k, s if i == 0 else 1,
                          groups=hidden)
            net.conv(f"{name}.se.reduce", hidden, squeeze, (1, 1), 1)
            net.conv(f"{name}.se.expand", squeeze, hidden, (1, 1), 1)
            net.conv(f"{name}.project", hidden, out, hw, 1)
            c, index = out, index + 1
    net.conv("head", c, 1280, hw, 1)
    return net.merged()


# ---------------------------------------------------------------------------------------------
# Audio: the convolutions of wav2vec 2.0

def _wav2vec2(samples=16000) -> tuple:
    """wav2vec 2.0 base (Baevski et al. 2020): the feature encoder's seven 512-channel 1-D
    convolutions without padding (kernels 10, 3, 3, 3, 3, 2, 2; strides 5, 2, 2, 2, 2, 2, 2)
    on raw 16 kHz audio, and the convolutional positional embedding (768 channels, kernel 128,
    padding 64, 16 groups) on the encoder's frames."""
    net = _Trace()
    length, c = (samples,), 1
    for i, (k, s) in enumerate(zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))):
        length = net.conv(f"feature_extractor.conv{i}", c, 512, length, k, s, 0, first=i == 0)
        c = 512
    net.conv("pos_conv", 768, 768, length, 128, 1, 64, groups=16)
    return net.merged()


# ---------------------------------------------------------------------------------------------
# Volumes: a 3-D U-Net

def _unet3d(size=32, base=16) -> tuple:
    """3-D U-Net (Cicek et al. 2016): two 3x3x3 convolutions per level, the second doubling
    the channels on the way down, 2x2x2 max pooling, 2x2x2 stride-2 transposed convolutions
    that keep the channels, skip connections concatenated before the two 3x3x3 convolutions
    of the way up, a 1x1x1 convolution to 3 labels.  Same padding (output size = input size)
    as in most implementations, one input channel, and `base` channels at the first
    convolution (the paper's 32, halved here by default to keep the timing short)."""
    net = _Trace()
    dhw, c, skips = (size,) * 3, 1, []
    for level in range(4):
        width = base * 2 ** level
        net.conv(f"down{level}.conv1", c, width, dhw, 3, first=level == 0)
        dhw = net.conv(f"down{level}.conv2", width, 2 * width, dhw, 3)
        c = 2 * width
        if level < 3:
            skips.append(c)
            dhw = _pool(dhw)
    for level in (2, 1, 0):
        dhw = net.conv(f"up{level}.upconv", c, c, dhw, 2, 2, transposed=True)
        width = base * 2 ** (level + 1)
        net.conv(f"up{level}.conv1", c + skips[level], width, dhw, 3)
        net.conv(f"up{level}.conv2", width, width, dhw, 3)
        c = width
    net.conv("out", c, 3, dhw, 1)
    return net.merged()


# ---------------------------------------------------------------------------------------------
# Generators: DCGAN

def _dcgan(latent=100, ngf=64) -> tuple:
    """The DCGAN generator (Radford et al. 2016) for 64x64 RGB images, as in PyTorch's DCGAN
    example: 4x4 transposed convolutions from the latent vector (1x1) to 4x4, then stride 2,
    padding 1 up to 64x64, the channels going from 8 * ngf to 3."""
    net = _Trace()
    hw = net.conv("main.0", latent, 8 * ngf, (1, 1), 4, 1, 0, first=True, transposed=True)
    c = 8 * ngf
    for i, out in enumerate((4 * ngf, 2 * ngf, ngf, 3)):
        hw = net.conv(f"main.{3 * i + 3}", c, out, hw, 4, 2, 1, transposed=True)
        c = out
    return net.merged()


# ---------------------------------------------------------------------------------------------
# More networks, run when named: other members of the same families

def _divisible(v, by=8) -> int:
    """`v` rounded to the nearest multiple of `by`, not below 90 % of it (MobileNet's channel
    rounding)."""
    rounded = max(by, int(v + by / 2) // by * by)
    return rounded + by if rounded < 0.9 * v else rounded


def _densenet121(size=224) -> tuple:
    """DenseNet-121 (Huang et al. 2017) as in torchvision: a 7x7 stride-2 stem and 3x3
    max pooling, four dense blocks of 6, 12, 24 and 16 layers (each a 1x1 convolution to 128
    channels and a 3x3 one to 32, its input all the channels before it), and transitions (a
    1x1 convolution halving the channels, 2x2 average pooling) between them."""
    net = _Trace()
    hw = _pool(net.conv("features.conv0", 3, 64, (size, size), 7, 2, first=True), 3, 2, 1)
    c = 64
    for block, count in enumerate((6, 12, 24, 16)):
        for i in range(count):
            name = f"denseblock{block + 1}.layer{i + 1}"
            net.conv(f"{name}.conv1", c + 32 * i, 128, hw, 1)
            net.conv(f"{name}.conv2", 128, 32, hw, 3)
        c += 32 * count
        if block < 3:
            net.conv(f"transition{block + 1}", c, c // 2, hw, 1)
            c, hw = c // 2, _pool(hw)
    return net.merged()


def _shufflenet_v2(size=224) -> tuple:
    """ShuffleNetV2 1.0x (Ma et al. 2018) as in torchvision: a 3x3 stride-2 stem and max
    pooling, stages of 4, 8 and 4 units to 116, 232 and 464 channels, a 1x1 convolution to
    1024.  A stage's first unit has two branches on all its input (a stride-2 3x3 depthwise
    and a 1x1 convolution; a 1x1, a stride-2 3x3 depthwise and a 1x1), the others one branch
    (1x1, 3x3 depthwise, 1x1) on half the channels."""
    net = _Trace()
    hw, c = _pool(net.conv("conv1", 3, 24, (size, size), 3, 2, first=True), 3, 2, 1), 24
    for stage, (count, out) in enumerate(zip((4, 8, 4), (116, 232, 464))):
        half = out // 2
        for unit in range(count):
            name = f"stage{stage + 2}.{unit}"
            if unit == 0:
                t = net.conv(f"{name}.branch1.depthwise", c, c, hw, 3, 2, groups=c)
                net.conv(f"{name}.branch1.pointwise", c, half, t, 1)
                net.conv(f"{name}.branch2.conv1", c, half, hw, 1)
                hw = net.conv(f"{name}.branch2.depthwise", half, half, hw, 3, 2, groups=half)
            else:
                net.conv(f"{name}.branch2.conv1", half, half, hw, 1)
                net.conv(f"{name}.branch2.depthwise", half, half, hw, 3, groups=half)
            net.conv(f"{name}.branch2.conv3", half, half, hw, 1)
            c = out
    net.conv("conv5", c, 1024, hw, 1)
    return net.merged()


def _mobilenet_v3_large(size=224) -> tuple:
    """MobileNetV3-Large (Howard et al. 2019) as in torchvision: a 3x3 stride-2 stem to 16
    channels, fifteen inverted residual blocks from the paper's table (1x1 expansion where the
    expanded width differs from the input, k x k depthwise, squeeze-and-excitation to a quarter
    of the expanded width on some, 1x1 projection), a 1x1 convolution to 960 channels."""
    net = _Trace()
    hw, c = net.conv("stem", 3, 16, (size, size), 3, 2, first=True), 16
    # (kernel, expanded, output channels, squeeze-and-excitation, stride)
    table = [(3, 16, 16, False, 1), (3, 64, 24, False, 2), (3, 72, 24, False, 1),
             (5, 72, 40, True, 2), (5, 120, 40, True, 1), (5, 120, 40, True, 1),
             (3, 240, 80, False, 2), (3, 200, 80, False, 1), (3, 184, 80, False, 1),
             (3, 184, 80, False, 1), (3, 480, 112, True, 1), (3, 672, 112, True, 1),
             (5, 672, 160, True, 2), (5, 960, 160, True, 1), (5, 960, 160, True, 1)]
    for index, (k, hidden, out, se, s) in enumerate(table, 1):
        name = f"block{index}"
        if hidden != c:
            net.conv(f"{name}.expand", c, hidden, hw, 1)
        hw = net.conv(f"{name}.depthwise", hidden, hidden, hw, k, s, groups=hidden)
        if se:
            squeeze = _divisible(hidden // 4)
            net.conv(f"{name}.se.reduce", hidden, squeeze, (1, 1), 1)
            net.conv(f"{name}.se.expand", squeeze, hidden, (1, 1), 1)
        net.conv(f"{name}.project", hidden, out, hw, 1)
        c = out
    net.conv("head", c, 960, hw, 1)
    return net.merged()


def _quartznet(frames=1000, features=64) -> tuple:
    """QuartzNet 5x5 (Kriman et al. 2020) on 10 s of speech (100 frames a second, 64 mel
    features): 1-D time-channel separable convolutions (a depthwise convolution of kernel k,
    then a 1x1 one).  C1: kernel 33, stride 2, to 256 channels; five blocks of five such
    sub-blocks (kernels 33, 39, 51, 63, 75; 256, 256, 512, 512, 512 channels), each block with
    a 1x1 residual convolution; C2: kernel 87, dilation 2; C3: 1x1 to 1024; C4: 1x1 to the 29
    characters."""
    net = _Trace()
    t = net.conv("c1.depthwise", features, features, (frames,), 33, 2, 16, groups=features,
                 first=True)
    net.conv("c1.pointwise", features, 256, t, 1)
    c = 256
    for block, (k, out) in enumerate(zip((33, 39, 51, 63, 75), (256, 256, 512, 512, 512))):
        name = f"b{block + 1}"
        net.conv(f"{name}.residual", c, out, t, 1)
        for sub in range(5):
            net.conv(f"{name}.{sub}.depthwise", c, c, t, k, groups=c)
            net.conv(f"{name}.{sub}.pointwise", c, out, t, 1)
            c = out
    net.conv("c2.depthwise", c, c, t, 87, groups=c, dilation=2)
    net.conv("c2.pointwise", c, 512, t, 1)
    net.conv("c3", 512, 1024, t, 1)
    net.conv("c4", 1024, 29, t, 1)
    return net.merged()


def _vnet(size=32) -> tuple:
    """V-Net (Milletari et al. 2016): 5x5x5 convolutions (one, two, then three per stage),
    2x2x2 stride-2 convolutions doubling the channels on the way down (16 to 256),
    2x2x2 stride-2 transposed convolutions on the way up (to the skip's channels, which are
    concatenated to them: stages of 256, 128, 64 and 32 channels), a 1x1x1 convolution to 2
    labels.
    One input channel; a `size`^3 volume (the paper's is 128x128x64)."""
    net = _Trace()
    dhw, c, skips = (size,) * 3, 16, []
    net.conv("in.conv", 1, 16, dhw, 5, first=True)
    for stage, convs in enumerate((2, 3, 3, 3)):
        skips.append((c, dhw))
        dhw = net.conv(f"down{stage + 1}.down", c, 2 * c, dhw, 2, 2)
        c *= 2
        for i in range(convs):
            net.conv(f"down{stage + 1}.conv{i + 1}", c, c, dhw, 5)
    for stage, convs in enumerate((3, 3, 2, 1)):
        skip, _ = skips.pop()
        dhw = net.conv(f"up{stage + 1}.up", c, skip, dhw, 2, 2, transposed=True)
        c = 2 * skip
        for i in range(convs):
            net.conv(f"up{stage + 1}.conv{i + 1}", c, c, dhw, 5)
    net.conv("out", c, 2, dhw, 1)
    return net.merged()


NETWORKS = {n.name: n for n in (
    Network("resnet18", "image classifier", "ResNet-18, torchvision, 224x224 input", 8,
            _resnet((2, 2, 2, 2), bottleneck=False)),
    Network("resnet50", "image classifier", "ResNet-50 v1.5, torchvision, 224x224 input", 8,
            _resnet((3, 4, 6, 3), bottleneck=True)),
    Network("resnext50", "grouped", "ResNeXt-50 32x4d, torchvision, 224x224 input", 8,
            _resnet((3, 4, 6, 3), bottleneck=True, groups=32, width_per_group=4)),
    Network("mobilenet_v2", "depthwise", "MobileNetV2 1.0, torchvision, 224x224 input", 16,
            _mobilenet_v2()),
    Network("efficientnet_b0", "depthwise", "EfficientNet-B0, torchvision, 224x224 input", 16,
            _efficientnet_b0()),
    Network("wav2vec2", "audio", "wav2vec 2.0 base convolutions, 1 s of 16 kHz audio", 4,
            _wav2vec2()),
    Network("unet3d", "volumes", "3-D U-Net, half width (16 at the top), 32^3 volume", 2,
            _unet3d()),
    Network("dcgan", "generator", "DCGAN generator, 100-d latent to 64x64 RGB, ngf 64", 32,
            _dcgan()),
)}

# Run only when named (``--networks``): more members of the families above, to see how the
# loops fare beyond the networks they are usually timed on.
MORE_NETWORKS = {n.name: n for n in (
    Network("densenet121", "image classifier", "DenseNet-121, torchvision, 224x224 input", 8,
            _densenet121()),
    Network("shufflenet_v2", "depthwise",
            "ShuffleNetV2 1.0x, torchvision, 224x224 input", 16, _shufflenet_v2()),
    Network("mobilenet_v3_large", "depthwise",
            "MobileNetV3-Large, torchvision, 224x224 input", 16, _mobilenet_v3_large()),
    Network("quartznet", "audio", "QuartzNet 5x5, 10 s of 64 mel features", 8, _quartznet()),
    Network("vnet", "volumes", "V-Net, 32^3 volume", 2, _vnet()),
)}

ALL_NETWORKS = {**NETWORKS, **MORE_NETWORKS}
