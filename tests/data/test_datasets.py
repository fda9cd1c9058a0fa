"""Tests for vitdeploy.data: IDX parsing, Fashion-MNIST, image folders, transforms, load_dataset/batches."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitdeploy.data import (
    FASHION_MNIST_CLASSES,
    ImageFolderDataset,
    batches,
    load_dataset,
    load_fashion_mnist,
    load_image,
    normalize,
    random_crop_flip,
    read_idx,
    to_model_input,
)
from vitdeploy.data.fashion_mnist import DEFAULT_ROOT
from vitdeploy.errors import VitDeployError

HAVE_FASHION_MNIST = (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").is_file() or (
    DEFAULT_ROOT / "t10k-labels-idx1-ubyte"
).is_file()
MEAN1, STD1 = (0.5,), (0.25,)


def write_idx(path: Path, array: np.ndarray, compress: bool) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_fashion_root(root: Path, count: int, compress: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


# --- IDX / Fashion-MNIST -------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / "a-idx3-ubyte", array, compress)
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("compress", [False, True])
def test_load_fashion_mnist_from_synthetic_root(tmp_path: Path, compress: bool) -> None:
    images, labels = make_fashion_root(tmp_path, count=12, compress=compress)
    x, y = load_fashion_mnist("test", root=tmp_path)
    assert x.dtype == torch.uint8 and x.shape == (12, 28, 28)
    assert y.dtype == torch.int64 and y.shape == (12,)
    np.testing.assert_array_equal(x.numpy(), images)
    np.testing.assert_array_equal(y.numpy(), labels)


def test_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_fashion_root(tmp_path, count=3, compress=False)
    monkeypatch.setenv("VITDEPLOY_FASHION_MNIST", str(tmp_path))
    assert load_fashion_mnist("train")[0].shape == (3, 28, 28)


def test_corrupt_magic_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(VitDeployError, match="magic"):
        read_idx(path)


def test_truncated_data_is_rejected(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "short-idx1-ubyte", np.zeros(10, dtype=np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(VitDeployError, match="declares shape"):
        read_idx(path)


def test_label_count_mismatch_is_rejected(tmp_path: Path) -> None:
    make_fashion_root(tmp_path, count=4, compress=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8), compress=False)
    with pytest.raises(VitDeployError, match="4 images"):
        load_fashion_mnist("test", root=tmp_path)


def test_missing_root_mentions_apt_get(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(VitDeployError, match="apt-get install dataset-fashion-mnist") as info:
        load_fashion_mnist("train", root=missing)
    assert str(missing) in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_split_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(VitDeployError, match="'validation'"):
        load_fashion_mnist("validation", root=tmp_path)


@pytest.mark.skipif(not HAVE_FASHION_MNIST, reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist() -> None:
    train_x, train_y = load_fashion_mnist("train")
    test_x, test_y = load_fashion_mnist("test")
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert int(train_y.min()) == 0 and int(train_y.max()) == 9
    assert train_y.bincount().tolist() == [6000] * 10
    assert len(FASHION_MNIST_CLASSES) == 10


# --- transforms ------------------------------------------------------------------------------


def test_normalize_per_channel() -> None:
    x = torch.ones(2, 3, 4, 4) * 0.5
    out = normalize(x, mean=(0.5, 0.0, 1.0), std=(1.0, 0.5, 0.25))
    assert torch.allclose(out[:, 0], torch.zeros(2, 4, 4))
    assert torch.allclose(out[:, 1], torch.ones(2, 4, 4))
    assert torch.allclose(out[:, 2], torch.full((2, 4, 4), -2.0))


def test_to_model_input_math_and_channels() -> None:
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)  # (1, 2, 2)
    out = to_model_input(images, img_size=2, in_chans=3, mean=(0.5, 0.5, 0.0), std=(0.5, 0.5, 1.0))
    assert out.dtype == torch.float32 and out.shape == (1, 3, 2, 2)
    expected = (torch.tensor([[0.0, 1.0], [0.2, 0.4]]) - 0.5) / 0.5
    assert torch.allclose(out[0, 0], expected)
    assert torch.allclose(out[0, 1], expected)
    assert torch.allclose(out[0, 2], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))


def test_to_model_input_size_mismatch_needs_resize() -> None:
    images = torch.zeros(2, 28, 28, dtype=torch.uint8)
    with pytest.raises(VitDeployError, match="28x28 but the model expects 224x224; pass --resize"):
        to_model_input(images, img_size=224, in_chans=1, mean=MEAN1, std=STD1)


def test_to_model_input_resize() -> None:
    images = torch.full((2, 28, 28), 128, dtype=torch.uint8)
    out = to_model_input(images, img_size=32, in_chans=3, mean=(0.0,) * 3, std=(1.0,) * 3, resize=True)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 128 / 255), atol=1e-6)


def test_to_model_input_rejects_rgb_to_gray() -> None:
    with pytest.raises(VitDeployError, match="3 channels but the model expects 1"):
        to_model_input(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), img_size=4, in_chans=1, mean=MEAN1, std=STD1)


def test_random_crop_flip_is_reproducible_and_keeps_shape() -> None:
    batch = torch.rand(16, 3, 8, 8)
    first = random_crop_flip(batch, padding=2, generator=torch.Generator().manual_seed(7))
    second = random_crop_flip(batch, padding=2, generator=torch.Generator().manual_seed(7))
    other = random_crop_flip(batch, padding=2, generator=torch.Generator().manual_seed(8))
    assert first.shape == batch.shape
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_random_crop_flip_without_padding_only_flips() -> None:
    batch = torch.rand(32, 1, 5, 5)
    out = random_crop_flip(batch, padding=0, generator=torch.Generator().manual_seed(0))
    flipped = batch.flip(-1)
    for original, mirrored, result in zip(batch, flipped, out):
        assert torch.equal(result, original) or torch.equal(result, mirrored)
    assert not torch.equal(out, batch) and not torch.equal(out, flipped)


def padded_crops(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every crop (and its mirror image) that random_crop_flip may return for one image."""
    size = image.shape[-1]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    crops = []
    for top in range(2 * padding + 1):
        for left in range(2 * padding + 1):
            crop = padded[:, top : top + size, left : left + size]
            crops += [crop, crop.flip(-1)]
    return crops


def test_random_crop_flip_outputs_are_padded_crops() -> None:
    batch = torch.rand(24, 2, 6, 6)
    out = random_crop_flip(batch, padding=2, generator=torch.Generator().manual_seed(0))
    for image, result in zip(batch, out):
        assert any(torch.equal(result, crop) for crop in padded_crops(image, padding=2))


# --- image folders ---------------------------------------------------------------------------


def make_image_folder(root: Path) -> None:
    for name, color, size in (("cat", (255, 0, 0), (40, 30)), ("ant", (0, 0, 255), (20, 50))):
        class_dir = root / name
        class_dir.mkdir(parents=True)
        for index in range(2):
            Image.new("RGB", size, color).save(class_dir / f"{index}.png")
    (root / "ant" / "notes.txt").write_text("not an image")


def test_image_folder_classes_shapes_and_channels(tmp_path: Path) -> None:
    make_image_folder(tmp_path)
    rgb = ImageFolderDataset(tmp_path, img_size=16, in_chans=3)
    assert rgb.classes == ["ant", "cat"]
    assert len(rgb) == 4
    image, label = rgb[0]
    assert label == 0 and image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert image[2].min() == 255 and image[0].max() == 0  # ant images are blue
    gray, label = ImageFolderDataset(tmp_path, img_size=16, in_chans=1)[3]
    assert label == 1 and gray.shape == (1, 16, 16)


def test_load_image_center_crops_after_shorter_side_resize(tmp_path: Path) -> None:
    # 256 is the resize target for a 224 crop, so this 256x300 image is only cropped.
    pixels = (np.arange(256 * 300).reshape(256, 300) % 251).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", img_size=224, in_chans=1)
    np.testing.assert_array_equal(image[0].numpy(), pixels[16:240, 38:262])


def test_image_folder_without_classes_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(VitDeployError, match="no class subdirectories"):
        ImageFolderDataset(tmp_path, img_size=16, in_chans=3)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(VitDeployError, match="no images"):
        ImageFolderDataset(tmp_path, img_size=16, in_chans=3)


def test_load_dataset_image_folder_split_and_batches(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "val")
    dataset = load_dataset(str(tmp_path), "val", img_size=8, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3)
    xs, ys = zip(*batches(dataset, batch_size=3))
    assert [x.shape for x in xs] == [(3, 3, 8, 8), (1, 3, 8, 8)]
    assert torch.cat(ys).tolist() == [0, 0, 1, 1]
    assert torch.allclose(xs[0][0, 2], torch.ones(8, 8))  # blue 255 -> (1 - 0.5) / 0.5


# --- load_dataset / batches ------------------------------------------------------------------


def test_load_dataset_unknown_source_lists_choices(tmp_path: Path) -> None:
    with pytest.raises(VitDeployError, match="fashion-mnist.*fmnist.*image folder"):
        load_dataset("cifar10", "test", img_size=28, in_chans=1, mean=MEAN1, std=STD1, root=tmp_path)


def test_load_dataset_fashion_limit_and_batches(tmp_path: Path) -> None:
    images, labels = make_fashion_root(tmp_path, count=20, compress=True)
    dataset = load_dataset(
        "fmnist", "test", img_size=28, in_chans=1, mean=MEAN1, std=STD1, limit=7, root=tmp_path
    )
    assert len(dataset) == 7
    x, y = dataset[6]
    expected = (torch.from_numpy(images[6]).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x[0], expected) and int(y) == labels[6]
    xs, ys = zip(*batches(dataset, batch_size=3))
    assert [len(batch) for batch in ys] == [3, 3, 1]
    assert torch.cat(ys).tolist() == labels[:7].tolist()
    assert torch.allclose(torch.cat(xs)[6], x)


def test_batches_shuffle_is_seeded_permutation(tmp_path: Path) -> None:
    make_fashion_root(tmp_path, count=20, compress=False)
    dataset = load_dataset(
        "fashion-mnist", "train", img_size=28, in_chans=1, mean=MEAN1, std=STD1, root=tmp_path
    )

    def order(seed: int) -> torch.Tensor:
        return torch.cat([y for _, y in batches(dataset, 6, shuffle=True, seed=seed)])

    assert sorted(order(1).tolist()) == sorted(dataset.labels.tolist())
    assert torch.equal(order(1), order(1))
    assert not torch.equal(order(1), dataset.labels)


def test_load_dataset_size_mismatch_fails_early(tmp_path: Path) -> None:
    make_fashion_root(tmp_path, count=2, compress=False)
    with pytest.raises(VitDeployError, match="pass --resize"):
        load_dataset("fmnist", "test", img_size=224, in_chans=1, mean=MEAN1, std=STD1, root=tmp_path)
    dataset = load_dataset(
        "fmnist", "test", img_size=224, in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3, resize=True, root=tmp_path
    )
    assert next(batches(dataset, 2))[0].shape == (2, 3, 224, 224)


def test_load_dataset_rejects_bad_options(tmp_path: Path) -> None:
    with pytest.raises(VitDeployError, match="one value per channel"):
        load_dataset("fmnist", "test", img_size=28, in_chans=3, mean=MEAN1, std=STD1, root=tmp_path)
    with pytest.raises(VitDeployError, match="limit"):
        load_dataset("fmnist", "test", img_size=28, in_chans=1, mean=MEAN1, std=STD1, limit=0, root=tmp_path)
