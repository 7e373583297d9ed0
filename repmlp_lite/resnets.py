"""The ImageNet networks of the RepMLP paper (Tables 2, 3, 4, 7) at full size, registered in the zoo.

:func:`repmlp_resnet` builds ResNet-50/101 (torchvision layout: 7x7 stem, max-pool, stages c2..c5 of
bottlenecks with 64/128/256/512 middle channels, stride on the 3x3) and puts RepMLP blocks into any
set of its stages. As the paper says (Sec. 3.5) and the authors' code does, a block with stride 2 (the
first of c3, c4, c5) stays a
ResNet bottleneck; every other block of a chosen stage is a :class:`~repmlp_lite.nets.RepMLPBottleneck`
(or a :class:`~repmlp_lite.nets.RepMLPLightBlock`), c2's first block included (its shortcut is a
1x1 conv + BN, 64 -> 256 channels). Counting Table 3 confirms it: with c2's first block left a
ResNet bottleneck, the c2 rows come out 8.70M parameters short.

The registered names (``repmlp_lite.list_models()``) are the rows of the paper's tables.

The authors' checkpoints of these nets (DingXiaoH/RepMLP, ``repmlp_resnet.py``) load with
:func:`repmlp_lite.load_official` through :func:`convert_official`, registered at the end of this file.
Their layout, training form (``deploy=False``), and where each key goes here:

=================================================  ==============================================
theirs                                             here (:class:`~repmlp_lite.resnets.RepMLPResNet`)
=================================================  ==============================================
``stage0.0.{conv,bn}.*`` (7x7 stem)                ``stem.0.{conv,bn}.*``
``stage1`` ... ``stage4``                          ``c2`` ... ``c5``
``<block>.shortcut.{conv,bn}.*``                   ``<block>.shortcut.{conv,bn}.*``
ResNet block ``conv1``, ``conv2``, ``conv3``       ``body.conv1``, ``body.conv2``, ``body.conv3``
``btnk_conv1``, ``btnk_conv2``                     ``body.reduce1x1``, ``body.reduce3x3``
``btnk_repmlp``, ``light_repmlp``                  ``body.repmlp``
``btnk_conv4``, ``btnk_conv5``                     ``body.expand3x3``, ``body.expand1x1``
``light_conv1``, ``light_conv3``                   ``body.reduce1x1``, ``body.expand1x1``
RepMLP ``avg.bn.*``                                ``global_perceptron.bn.*``
RepMLP ``fc1_fc2.fc1.*``, ``fc1_fc2.fc2.*``        ``global_perceptron.fc1.*``, ``global_perceptron.fc2.*``
RepMLP ``fc3.weight`` ``(O*h*w, C*h*w/g, 1, 1)``   ``fc3.weight`` ``(O*h*w, C*h*w/g)`` (a 1x1 conv there)
RepMLP ``fc3_bn.*``, ``repconv{K}.{conv,bn}.*``    ``fc3_bn.*``, ``local_perceptron.conv{K}.{conv,bn}.*``
``linear.*``                                       ``fc.*``
=================================================  ==============================================

Their deployed form (``deploy=True`` or after ``switch_to_deploy``) has ``conv.weight`` and
``conv.bias`` for every conv + BN, and ``fc3.weight`` + ``fc3.bias`` with no ``fc3_bn``, ``avg.bn``
or ``repconv``: exactly what :func:`repmlp_lite.deploy` leaves here. A ``module.`` prefix
(DataParallel) is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from ._checks import check_divisible, check_positive
from .layers import conv_bn_relu
from .nets import RepMLPBottleneck, RepMLPLightBlock, ResNetBottleneck
from .official import StateDict, register_official, renamed_state_dict
from .zoo import register_model

STAGES = ("c2", "c3", "c4", "c5")
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
_STRIDE = {"c2": 4, "c3": 8, "c4": 16, "c5": 32}  # total downsampling at each stage
_OUT = {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}  # output channels; mid = out / 4 (ResNet), / 8 (Light)


class RepMLPResNet(nn.Module):
    """ResNet-50/101 with RepMLP blocks in some stages: ``(N, 3, S, S) -> (N, num_classes)``.

    Modules: ``stem`` (7x7 conv + BN + ReLU, stride 2; 3x3 max-pool, stride 2), ``c2`` ... ``c5``
    (``nn.Sequential`` of blocks), ``pool`` (global average), ``fc``. Build it with :func:`repmlp_resnet`.
    """

    def __init__(self, stages: Mapping[str, nn.Sequential], num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(3, 64, 7, stride=2), nn.MaxPool2d(3, 2, 1))
        for name in STAGES:
            self.add_module(name, stages[name])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(_OUT["c5"], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for name in STAGES:
            x = getattr(self, name)(x)
        return self.fc(self.pool(x).flatten(1))


def _per_stage(name: str, value: int | Mapping[str, int], stages: Sequence[str]) -> dict[str, int]:
    """``value`` for every stage in ``stages`` (one int for all, or a mapping stage -> int)."""
    if isinstance(value, Mapping):
        missing = [s for s in stages if s not in value]
        if missing:
            raise ValueError(f"{name} has no value for stage {missing[0]!r} (given for {sorted(value)})")
        return {s: value[s] for s in stages}
    return {s: value for s in stages}


@register_model("repmlp_resnet")
def repmlp_resnet(
    num_classes: int = 1000,
    depth: int = 50,
    image_size: int = 224,
    repmlp_stages: Sequence[str] = (),
    block: str = "bottleneck",
    r: int | Mapping[str, int] = 2,
    groups: int | Mapping[str, int] = 8,
    h: int = 7,
    reparam_conv_k: Sequence[int] = (1, 3, 5),
    fc1_fc2_reduction: int = 1,
) -> RepMLPResNet:
    """ResNet-``depth`` at ``image_size`` with RepMLP in ``repmlp_stages`` (any of "c2" ... "c5").

    Args:
        block: "bottleneck" (:class:`~repmlp_lite.nets.RepMLPBottleneck`, mid = C/4, reduction ``r``)
            or "light" (:class:`~repmlp_lite.nets.RepMLPLightBlock`, mid = C/8; ``r`` unused).
        r, groups: one value, or one per stage, e.g. ``r={"c3": 2, "c4": 4}`` (the paper's Table 4).
        h: partition size ``h = w``; each chosen stage's map (``image_size / 4 ... / 32``) must be
            divisible by it.
        reparam_conv_k, fc1_fc2_reduction: of every RepMLP block.

    With no ``repmlp_stages`` it is the plain ResNet. In the zoo as ``"repmlp_resnet"``, the keyword
    builder of Tables 2 and 3, e.g. Table 2's r = 8, g = 8 in c4:
    ``create_model("repmlp_resnet", repmlp_stages=("c4",), r=8)``.
    """
    if depth not in DEPTHS:
        raise ValueError(f"depth must be one of {sorted(DEPTHS)}, got {depth!r}")
    if block not in ("bottleneck", "light"):
        raise ValueError(f"block must be 'bottleneck' or 'light', got {block!r}")
    unknown = [s for s in repmlp_stages if s not in STAGES]
    if unknown:
        raise ValueError(f"repmlp_stages must be among {STAGES}, got {unknown[0]!r}")
    check_positive("num_classes", num_classes)
    check_divisible("image_size", image_size, "32 (five stride-2 steps)", 32)
    rs, gs = _per_stage("r", r, repmlp_stages), _per_stage("groups", groups, repmlp_stages)

    stages, channels = {}, 64
    for name, count in zip(STAGES, DEPTHS[depth]):
        out, size = _OUT[name], image_size // _STRIDE[name]
        blocks = []
        for i in range(count):
            stride = 2 if i == 0 and name != "c2" else 1
            if stride == 2 or name not in repmlp_stages:
                blocks.append(ResNetBottleneck(channels, out // 4, out, stride))
            elif block == "light":
                blocks.append(RepMLPLightBlock(channels, out // 8, out, size, size, h, h, gs[name],
                                               fc1_fc2_reduction, reparam_conv_k))
            else:
                blocks.append(RepMLPBottleneck(channels, out // 4, out, size, size, h, h, rs[name], gs[name],
                                               fc1_fc2_reduction, reparam_conv_k))
            channels = out
        stages[name] = nn.Sequential(*blocks)
    return RepMLPResNet(stages, num_classes)


# ---- the rows of the paper's tables -------------------------------------------------------------

_C3C4 = ("c3", "c4")
_R = {"c3": 2, "c4": 4}  # the paper's r in c3 and c4 (Sec. 4.2: r = 2, 2, 4, 4 in c2 ... c5)


@register_model("resnet50_224")
def resnet50_224(num_classes: int = 1000) -> RepMLPResNet:
    """ResNet-50 for 224x224 input (Table 4: 25.53M parameters, 4089M FLOPs)."""
    return repmlp_resnet(num_classes, 50, 224)


@register_model("resnet101_224")
def resnet101_224(num_classes: int = 1000) -> RepMLPResNet:
    """ResNet-101 for 224x224 input (Table 4: 44.49M, 7801M)."""
    return repmlp_resnet(num_classes, 101, 224)


@register_model("resnet50_320")
def resnet50_320(num_classes: int = 1000) -> RepMLPResNet:
    """ResNet-50 for 320x320 input (Table 4: 25.53M, 8343M)."""
    return repmlp_resnet(num_classes, 50, 320)


@register_model("resnet101_320")
def resnet101_320(num_classes: int = 1000) -> RepMLPResNet:
    """ResNet-101 for 320x320 input (Table 4: 44.49M, 15919M)."""
    return repmlp_resnet(num_classes, 101, 320)


@register_model("repmlp_res50_224")
def repmlp_res50_224(num_classes: int = 1000) -> RepMLPResNet:
    """RepMLP-Res50 (Table 4): RepMLP bottlenecks in c3+c4, h = w = 7, K = 1,3,5, g = 8, r = 2/4."""
    return repmlp_resnet(num_classes, 50, 224, _C3C4, r=_R, groups=8, h=7)


def _res50_320(num_classes: int, g_c3: int, g_c4: int) -> RepMLPResNet:
    """RepMLP-Res50-gX/Y at 320 (Table 4): h = w = 10, K = 1,3,5,7, g = X in c3 and Y in c4."""
    return repmlp_resnet(num_classes, 50, 320, _C3C4, r=_R, groups={"c3": g_c3, "c4": g_c4}, h=10,
                         reparam_conv_k=(1, 3, 5, 7))


@register_model("repmlp_res50_g8_16_320")
def repmlp_res50_g8_16_320(num_classes: int = 1000) -> RepMLPResNet:
    """RepMLP-Res50-g8/16 at 320 (Table 4: 59.22M, 8057M)."""
    return _res50_320(num_classes, 8, 16)


@register_model("repmlp_res50_g8_8_320")
def repmlp_res50_g8_8_320(num_classes: int = 1000) -> RepMLPResNet:
    """RepMLP-Res50-g8/8 at 320 (Table 4: 72.02M, 8108M)."""
    return _res50_320(num_classes, 8, 8)


@register_model("repmlp_res50_g4_8_320")
def repmlp_res50_g4_8_320(num_classes: int = 1000) -> RepMLPResNet:
    """RepMLP-Res50-g4/8 at 320 (Table 4: 87.38M, 8354M)."""
    return _res50_320(num_classes, 4, 8)


@register_model("repmlp_res50_light_224")
def repmlp_res50_light_224(num_classes: int = 1000, groups: int = 8) -> RepMLPResNet:
    """RepMLP-Res50 Light (Table 7: 57.86M, 2919M): Light blocks in c3+c4, h = w = 7, K = 1,3,5, g = 8.

    g = 8 is what the paper's text says; the authors' released Light model
    (``create_RepMLPRes50_Light_224``) uses ``groups=4``, a different network.
    """
    return repmlp_resnet(num_classes, 50, 224, _C3C4, block="light", groups=groups, h=7)


# ---- the authors' checkpoints (DingXiaoH/RepMLP, repmlp_resnet.py) ------------------------------------

_OFFICIAL_RENAMES: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
    (r"^module\.", ""),
    (r"^stage0\.0\.", "stem.0."),
    (r"^stage([1-4])\.", lambda m: f"c{int(m.group(1)) + 1}."),
    (r"\.(conv1|conv2|conv3)\.", r".body.\1."),
    (r"\.(btnk|light)_conv1\.", ".body.reduce1x1."),
    (r"\.btnk_conv2\.", ".body.reduce3x3."),
    (r"\.(btnk|light)_repmlp\.", ".body.repmlp."),
    (r"\.btnk_conv4\.", ".body.expand3x3."),
    (r"\.(btnk_conv5|light_conv3)\.", ".body.expand1x1."),
    (r"\.avg\.bn\.", ".global_perceptron.bn."),
    (r"\.fc1_fc2\.(fc1|fc2)\.", r".global_perceptron.\1."),
    (r"\.repconv(\d+)\.", r".local_perceptron.conv\1."),
    (r"^linear\.", "fc."),
)


@register_official(RepMLPResNet)
def convert_official(model: nn.Module, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """The authors' RepMLP-ResNet state dict (training or deployed form) in this package's keys.

    FC3's 1x1-conv kernel ``(O*h*w, C*h*w/g, 1, 1)`` becomes the ``GroupedFC`` matrix ``(O*h*w, C*h*w/g)``.
    """
    return renamed_state_dict(state_dict, _OFFICIAL_RENAMES, "repmlp.fc3.weight")
