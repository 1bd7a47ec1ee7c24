"""Data: IDX and image loaders, splits, augmentation, spirals, irregular series, toy densities."""

from ._download import DownloadError, download_verified
from .densities import (
    ENERGIES,
    PLOT_BOUNDS,
    QUADRATURE_BOUNDS,
    EnergyTarget,
    Normalizer,
    energy_target,
    energy_u1,
    energy_u2,
    energy_u3,
    energy_u4,
    log_normalizer,
    wall,
)
from .idx import (
    IDXChecksumError,
    IDXFormatError,
    read_idx,
    read_idx_images,
    read_idx_labels,
    read_idx_pair,
)
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
from .toy import TOY_DATASETS, make_circles, make_moons, sample_toy
from .transforms import random_crop, to_float

__all__ = [
    "ENERGIES",
    "PLOT_BOUNDS",
    "QUADRATURE_BOUNDS",
    "SOURCES",
    "TOY_DATASETS",
    "DownloadError",
    "EnergyTarget",
    "IDXChecksumError",
    "IDXFormatError",
    "ImageSource",
    "IrregularSeries",
    "Normalizer",
    "default_data_dir",
    "download_verified",
    "energy_target",
    "energy_u1",
    "energy_u2",
    "energy_u3",
    "energy_u4",
    "find_image_files",
    "from_arrays",
    "load_digits",
    "load_images",
    "log_normalizer",
    "make_circles",
    "make_moons",
    "make_spirals",
    "next_valid_time",
    "previous_valid_time",
    "random_crop",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_idx_pair",
    "sample_toy",
    "spiral_curves",
    "stratified_subset",
    "to_float",
    "train_val_split",
    "wall",
]
