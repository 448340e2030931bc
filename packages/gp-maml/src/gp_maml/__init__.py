"""GP-MAML, GP-ANIL, GP-BOIL: adaptive pseudo-labelling for few-shot MAML-family learners,
on ``torch.func`` (Liu et al., "Generating Pseudo-labels Adaptively for Few-shot
Model-Agnostic Meta-Learning", arXiv 2207.04217)."""

from .adaptation import adapt, weighted_cross_entropy
from .backbones import Conv4, ResNet12, conv4, create_backbone, resnet12
from .data import Episode, EpisodeSampler, FewShotDataset
from .label_propagation import (
    RelationNet,
    TPNRelationNet,
    class_mass_normalize,
    gaussian_affinity,
    label_propagation,
)
from .layers import (
    BatchNorm2d,
    ChannelsLastMaxPool2d,
    ElementwiseBackwardMaxPool2d,
    FusedBatchNorm2d,
    MaxPool2d,
    SampleWeightedBatchNorm2d,
    swap_layers,
)
from .learners import (
    METHODS,
    PRESETS,
    MetaLearner,
    MetaOutput,
    check_no_running_stats,
    create_learner,
    paper_rules,
    paper_settings,
    tpn_relation_net,
)
from .picking import pick_balanced_or_confident, pick_confident, pick_pseudo_labels

__version__ = "0.3.0"

__all__ = [
    "METHODS",
    "PRESETS",
    "BatchNorm2d",
    "ChannelsLastMaxPool2d",
    "Conv4",
    "ElementwiseBackwardMaxPool2d",
    "Episode",
    "EpisodeSampler",
    "FewShotDataset",
    "FusedBatchNorm2d",
    "MaxPool2d",
    "MetaLearner",
    "MetaOutput",
    "RelationNet",
    "ResNet12",
    "SampleWeightedBatchNorm2d",
    "TPNRelationNet",
    "adapt",
    "check_no_running_stats",
    "class_mass_normalize",
    "conv4",
    "create_backbone",
    "create_learner",
    "gaussian_affinity",
    "label_propagation",
    "paper_rules",
    "paper_settings",
    "pick_balanced_or_confident",
    "pick_confident",
    "pick_pseudo_labels",
    "resnet12",
    "swap_layers",
    "tpn_relation_net",
    "weighted_cross_entropy",
]
