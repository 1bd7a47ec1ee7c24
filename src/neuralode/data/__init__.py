"""Data: the IDX reader, MNIST / Fashion-MNIST / 8×8 digits loaders, splits, augmentation."""

from ._download import DownloadError, download_verified
from .idx import IDXFormatError, read_idx, read_idx_images, read_idx_labels, read_idx_pair
from .images import (
    SOURCES,
    ImageSource,
    default_data_dir,
    find_image_files,
    load_digits,
    load_images,
)
from .splits import stratified_subset, train_val_split
from .transforms import random_crop, to_float

__all__ = [
    "SOURCES",
    "DownloadError",
    "IDXFormatError",
    "ImageSource",
    "default_data_dir",
    "download_verified",
    "find_image_files",
    "load_digits",
    "load_images",
    "random_crop",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "stratified_subset",
    "to_float",
    "train_val_split",
]
