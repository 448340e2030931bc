r"""Image-dataset readers (``pip install 'lab-common[vision]'``: torchvision and pillow).

``build_image_dataset`` reads Fashion-MNIST, MNIST, CIFAR-10/100 (torchvision's readers, from
disk only; gzipped IDX files are unpacked once into :func:`lab_common.cache_dir`) or an
ImageNet-style folder; ``load_cifar10_tensors`` reads the shared CIFAR-10 JPEG archive
(training images only) into one cached uint8 tensor; ``tensor_datasets`` gives the named
datasets as in-memory :class:`TensorImageDataset`\ s (crop + flip), with an optional validation
split held out from the training images. The dataset *location* helpers, :func:`lab_common.shared_datasets_root`
and :func:`lab_common.cache_dir`, are in the core: they need no torchvision.
"""

from .cifar10 import CIFAR10_ARCHIVE, load_cifar10_tensors
from .longtail import (
    dataset_targets,
    longtail_counts,
    longtail_indices,
    longtail_subset,
    shot_splits,
    split_accuracy,
)
from .readers import (
    DATASET_NAMES,
    build_image_dataset,
    dataset_num_classes,
    load_fashion_mnist_tensors,
)
from .splits import class_balanced_split
from .tensors import (
    DATASET_STATS,
    SeededSamples,
    TensorImageDataset,
    load_tensors,
    tensor_datasets,
    validation_split,
)

__all__ = [
    "CIFAR10_ARCHIVE",
    "DATASET_STATS",
    "DATASET_NAMES",
    "SeededSamples",
    "TensorImageDataset",
    "build_image_dataset",
    "class_balanced_split",
    "dataset_num_classes",
    "dataset_targets",
    "load_cifar10_tensors",
    "load_fashion_mnist_tensors",
    "load_tensors",
    "longtail_counts",
    "longtail_indices",
    "longtail_subset",
    "shot_splits",
    "split_accuracy",
    "tensor_datasets",
    "validation_split",
]
