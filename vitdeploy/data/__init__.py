"""Datasets for evaluating and fine-tuning pruned ViTs: Fashion-MNIST, image folders, transforms."""

from vitdeploy.data.datasets import InMemoryImageDataset, batches, dataset_for, holdout_split, load_dataset
from vitdeploy.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx
from vitdeploy.data.imagefolder import IMAGE_EXTENSIONS, ImageFolderDataset, load_image
from vitdeploy.data.transforms import normalize, random_crop_flip, to_model_input

__all__ = [
    "FASHION_MNIST_CLASSES",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "InMemoryImageDataset",
    "batches",
    "dataset_for",
    "holdout_split",
    "load_dataset",
    "load_fashion_mnist",
    "load_image",
    "normalize",
    "random_crop_flip",
    "read_idx",
    "to_model_input",
]
