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
             transposed=False, output_padding=0) -> tuple:
        if padding is None:
            padding = 0 if transposed else (k - 1) // 2     # "same" for odd kernels, stride 1
        shape = _conv(c, o, size, k, stride, padding, groups, transposed, output_padding)
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
