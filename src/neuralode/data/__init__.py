"""Data: the IDX reader, MNIST / Fashion-MNIST / 8×8 digits, spirals, irregular series, splits."""

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
from .irregular import IrregularSeries, from_arrays, next_valid_time, previous_valid_time
from .spirals import make_spirals, spiral_curves
from .splits import stratified_subset, train_val_split
from .transforms import random_crop, to_float

__all__ = [
    "SOURCES",
    "DownloadError",
    "IDXFormatError",
    "ImageSource",
    "IrregularSeries",
    "default_data_dir",
    "download_verified",
    "find_image_files",
    "from_arrays",
    "load_digits",
    "load_images",
    "make_spirals",
    "next_valid_time",
    "previous_valid_time",
    "random_crop",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "spiral_curves",
    "stratified_subset",
    "to_float",
    "train_val_split",
]
