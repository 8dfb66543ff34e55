"""Data: datasets, minibatches, splits and k-fold (:mod:`dataset`), readers (:mod:`loaders`,
image folders in :mod:`images`) and augmentation (:mod:`augment`).

The shipped data file, read by :func:`load_digits`:

``digits.csv.gz``: the Optical Recognition of Handwritten Digits data set
(E. Alpaydin and C. Kaynak, 1998; UCI Machine Learning Repository,
https://doi.org/10.24432/C50P49), licensed under Creative Commons
Attribution 4.0 International (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/). This is the copy that
scikit-learn distributes (``sklearn/datasets/data/digits.csv.gz``, byte for
byte): the UCI test set of 1,797 images of 8x8 pixels, each pixel a count
0..16 of the "on" pixels in a 4x4 block of a 32x32 bitmap, from 13 writers.
One row per image: 64 pixel values in row-major order, then the digit 0..9.
No changes were made to the data.
"""

from fastconv.data.augment import Compose, RandomCrop, RandomHorizontalFlip
from fastconv.data.dataset import DataError, Dataset, Normalizer, as_dataset, kfold, train_val_split
from fastconv.data.images import load_image_folder, read_image
from fastconv.data.loaders import CIFAR10_CLASSES, load_cifar10, load_digits, load_mnist, load_npz, read_idx

__all__ = ["CIFAR10_CLASSES", "Compose", "DataError", "Dataset", "Normalizer", "RandomCrop", "RandomHorizontalFlip",
           "as_dataset", "kfold", "load_cifar10", "load_digits", "load_image_folder", "load_mnist", "load_npz",
           "read_idx", "read_image", "train_val_split"]
