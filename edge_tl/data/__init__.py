"""Image data: folders and built-in sets, the one preprocessing, batches, augmentation.

Importing this package imports neither torch nor (until first use) PIL, numpy or
scikit-learn. The torch-facing dataset lives in :mod:`edge_tl.data.torch_dataset`.
"""

from edge_tl.data.augment import AugmentConfig
from edge_tl.data.dataset import (
    BUILTIN_DATASETS,
    SPLIT_FILE,
    DatasetSplit,
    Sample,
    SkippedFile,
    iter_batches,
    load_dataset,
    load_image,
    load_split,
    save_split,
    split_from_run,
    split_to_dict,
    unlabelled_samples,
)
from edge_tl.data.images import IMAGE_EXTENSIONS, MAX_PIXELS, is_image_file, open_image, to_rgb
from edge_tl.data.preprocess import preprocess

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "SPLIT_FILE",
    "AugmentConfig",
    "DatasetSplit",
    "Sample",
    "SkippedFile",
    "is_image_file",
    "iter_batches",
    "load_dataset",
    "load_image",
    "load_split",
    "open_image",
    "preprocess",
    "save_split",
    "split_from_run",
    "split_to_dict",
    "to_rgb",
    "unlabelled_samples",
]
