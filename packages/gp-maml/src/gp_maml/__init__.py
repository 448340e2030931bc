"""GP-MAML, GP-ANIL, GP-BOIL: adaptive pseudo-labelling for few-shot MAML-family learners,
on ``torch.func`` (Liu et al., "Generating Pseudo-labels Adaptively for Few-shot
Model-Agnostic Meta-Learning", arXiv 2207.04217)."""

from .adaptation import adapt, weighted_cross_entropy
from .backbones import (
    BatchNorm2d,
    Conv4,
    MaxPool2d,
    ResNet12,
    conv4,
    create_backbone,
    fast_compiled_layers,
    resnet12,
    sample_weighted_batch_norm,
)
from .data import Episode, EpisodeSampler, FewShotDataset
from .label_propagation import (
    RelationNet,
    class_mass_normalize,
    gaussian_affinity,
    label_propagation,
)
from .learners import METHODS, MetaLearner, MetaOutput, check_no_running_stats, create_learner
from .picking import pick_pseudo_labels

__version__ = "0.2.0"

__all__ = [
    "METHODS",
    "BatchNorm2d",
    "Conv4",
    "Episode",
    "EpisodeSampler",
    "FewShotDataset",
    "MaxPool2d",
    "MetaLearner",
    "MetaOutput",
    "RelationNet",
    "ResNet12",
    "adapt",
    "check_no_running_stats",
    "class_mass_normalize",
    "conv4",
    "create_backbone",
    "create_learner",
    "fast_compiled_layers",
    "gaussian_affinity",
    "label_propagation",
    "pick_pseudo_labels",
    "resnet12",
    "sample_weighted_batch_norm",
    "weighted_cross_entropy",
]
