"""One data package: every reader of labelled images in hemaedge (training, export parity and
calibration, benchmarks) goes through it, so a split, a class order, a decoded pixel and a
"quick run" subset mean the same thing everywhere.

  readers      MedMNIST .npz files and ImageFolder trees behind `open_dataset` (see its docstring)
  medmnist     MedMNIST names, class lists, published md5s, verified downloads
  verify       `hemaedge data info` / `verify`
  calibration  calibration sets: make, read (checksums verified), verify
  subsets      the subsetting policies of quick runs and calibration (--per-class, --sample, --spread)
  names        matching a data set's class names to a model's

numpy, OpenCV and hemaedge.edge only at import time (scikit-learn is imported when a flat tree
is split), so a device with the edge extra can read a test set with it.
"""
from hemaedge.edge.errors import DataError
from hemaedge.edge.paths import cache_dir
from hemaedge.train.data.calibration import (FIELDS, MANIFEST, default_calibration_dir, load_calibration_images,
                                             make_calibration_set, read_manifest, verify_calibration)
from hemaedge.train.data.medmnist import (CLASS_NAMES_BLOODMNIST, MEDMNIST_CLASSES, MEDMNIST_MD5, download_medmnist,
                                          md5sum, medmnist_id, medmnist_url)
from hemaedge.train.data.names import label_map, normalise
from hemaedge.train.data.readers import (CLASSES_FILE, IMAGE_SUFFIXES, SPLITS, Dataset, SplitData, check_image_file,
                                         class_order, find_dataset, open_dataset, probe_image, read_class_list,
                                         read_image, stratified_split)
from hemaedge.train.data.subsets import first_per_class, sample, sample_per_class, spread
from hemaedge.train.data.verify import VerifyReport, describe, verify_dataset

__all__ = [
    "DataError", "Dataset", "SplitData", "open_dataset", "CLASS_NAMES_BLOODMNIST", "SPLITS", "CLASSES_FILE",
    "IMAGE_SUFFIXES", "MEDMNIST_MD5", "MEDMNIST_CLASSES", "stratified_split", "class_order",
    "read_class_list", "read_image", "check_image_file", "probe_image", "download_medmnist",
    "medmnist_url", "medmnist_id", "md5sum", "cache_dir", "find_dataset", "describe",
    "verify_dataset", "VerifyReport",
    "load_calibration_images", "make_calibration_set", "read_manifest", "verify_calibration",
    "default_calibration_dir", "MANIFEST", "FIELDS",
    "label_map", "normalise", "first_per_class", "sample", "sample_per_class", "spread",
]
