"""Checkpoints of the authors' RepMLP-ResNets of the first paper (DingXiaoH/RepMLP,
``repmlp_resnet.py``) for the zoo.

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
from collections.abc import Callable

import torch
from torch import nn

from .official import StateDict, register_official, renamed_state_dict
from .resnets import RepMLPResNet

_RENAMES: tuple[tuple[str, str | Callable[[re.Match[str]], str]], ...] = (
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
def convert_v1_repmlp_resnet(model: nn.Module, state_dict: StateDict) -> dict[str, torch.Tensor]:
    """The authors' RepMLP-ResNet state dict (training or deployed form) in this package's keys.

    FC3's 1x1-conv kernel ``(O*h*w, C*h*w/g, 1, 1)`` becomes the ``GroupedFC`` matrix ``(O*h*w, C*h*w/g)``.
    """
    return renamed_state_dict(state_dict, _RENAMES, "repmlp.fc3.weight")
