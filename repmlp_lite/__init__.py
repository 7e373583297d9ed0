"""repmlp_lite: RepMLP (Ding et al., arXiv 2105.01883) by hand, one module per idea of the paper.

* :mod:`~repmlp_lite.conv_as_fc`: a conv as an FC kernel, built by convolving an identity matrix.
* :mod:`~repmlp_lite.fusion`: BatchNorm absorbed into the conv or FC next to it.
* :mod:`~repmlp_lite.layers`: the layers several networks share (grouped FC, conv + BN, FC + BN).
* :mod:`~repmlp_lite.block`: the RepMLP block (global, partition and local perceptrons) and its merge;
  :mod:`~repmlp_lite.fast_forward`: the merged block's fast forward; :mod:`~repmlp_lite.fast_training`:
  the layers that run the training form's BatchNorms and conv branches in kernels suited to partitions.
* :mod:`~repmlp_lite.reparameterize`: the one way a module says it is merged (``Reparameterizable``),
  merging a whole model (``reparameterize_model``, ``deploy``), and checking that the merge changed nothing.
* :mod:`~repmlp_lite.precision`: full float32 on any device (``full_float32``: no TF32 on a GPU), under
  which every merge and every comparison of the two forms runs.
* :mod:`~repmlp_lite.nets`: the paper's RepMLP bottleneck and Light block, and small nets for chapter 5.
* :mod:`~repmlp_lite.resnets`, :mod:`~repmlp_lite.puremlp`: the networks of the paper's tables, at full size.
* :mod:`~repmlp_lite.repmlpnet`: RepMLPNet (CVPR 2022): the block with share-sets and Locality Injection, the net.
* :mod:`~repmlp_lite.zoo`, :mod:`~repmlp_lite.official`: the papers' networks by name, and the authors'
  checkpoints (each family's converter is in its own file).
* :mod:`~repmlp_lite.data`, :mod:`~repmlp_lite.train`: real images (no torchvision) and a training loop for
  the book; ``python -m repmlp_lite.train`` trains any zoo model, step by step
  (:mod:`~repmlp_lite.training_run`, :mod:`~repmlp_lite.recipe`, :mod:`~repmlp_lite.runtime`,
  :mod:`~repmlp_lite.checkpoint`, :mod:`~repmlp_lite.finish`).
* :mod:`~repmlp_lite.measure` (counting, timing), :mod:`~repmlp_lite.block_costs`, :mod:`~repmlp_lite.bench`,
  :mod:`~repmlp_lite.paper_speed`, :mod:`~repmlp_lite.train_step_speed`, :mod:`~repmlp_lite.tables`,
  :mod:`~repmlp_lite.export`: the measurements; :mod:`~repmlp_lite.measured`: figures measured on other
  machines (the repository's ``results/``).
* :mod:`~repmlp_lite.style`, :mod:`~repmlp_lite.viz`, :mod:`~repmlp_lite.diagram`, :mod:`~repmlp_lite.overview`,
  :mod:`~repmlp_lite.explorers`, :mod:`~repmlp_lite.summary`, :mod:`~repmlp_lite.ablation`: the book's
  figures, explorers and tables (they need the ``[chapters]`` extra; ``import repmlp_lite`` imports none of them).
"""

from .block import RepMLPBlock, partition, unpartition
from .conv_as_fc import conv_bias_to_fc, conv_to_fc, fc_forward, grouped_to_dense
from .fusion import fuse_bn_linear, fuse_conv_bn, fuse_linear_bn
from .nets import (
    RepMLPBottleneck,
    RepMLPLightBlock,
    ResNetBottleneck,
    repmlp_light_block,
    small_conv_resnet,
    small_repmlp_resnet,
)
from .official import load_official
from .precision import full_float32
from .puremlp import pure_mlp
from .reparameterize import Equivalence, Reparameterizable, check_equivalence, deploy, reparameterize_model
from .repmlpnet import RepMLPNet, RepMLPNetBlock, RepMLPNetUnit, inject_locality, repmlpnet, small_repmlpnet
from .resnets import repmlp_resnet
from .zoo import create_model, list_models

__all__ = [
    "Equivalence",
    "RepMLPBlock",
    "RepMLPBottleneck",
    "RepMLPLightBlock",
    "RepMLPNet",
    "RepMLPNetBlock",
    "RepMLPNetUnit",
    "Reparameterizable",
    "ResNetBottleneck",
    "check_equivalence",
    "conv_bias_to_fc",
    "conv_to_fc",
    "create_model",
    "deploy",
    "fc_forward",
    "full_float32",
    "fuse_bn_linear",
    "fuse_conv_bn",
    "fuse_linear_bn",
    "grouped_to_dense",
    "inject_locality",
    "list_models",
    "load_official",
    "partition",
    "pure_mlp",
    "repmlp_light_block",
    "repmlp_resnet",
    "reparameterize_model",
    "repmlpnet",
    "small_conv_resnet",
    "small_repmlpnet",
    "small_repmlp_resnet",
    "unpartition",
]
__version__ = "0.1.0"
