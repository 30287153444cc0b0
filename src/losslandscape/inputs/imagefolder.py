"""`data.name = "imagefolder"`: a folder of images in the ImageNet layout, streamed.

    root/train/<class>/<image>    the train split
    root/val/<class>/<image>      the test split (root/test when there is no root/val)

Classes are the sub-folders of a split's folder, sorted by name, numbered 0..C-1; a class's
images are the files under its folder (sub-folders too) whose names end in one of
IMAGE_EXTENSIONS (any case), in sorted order. That is the order and numbering of torchvision's
`ImageFolder`, so a part or a subset of the data names the same images as there.

Each image is decoded with Pillow, converted to RGB (a grayscale image gets three equal
channels), its shorter side resized to round(image_size * 8 / 7) (256 for 224) with
`PIL.Image.BILINEAR`, the longer side to int(that * long / short), a centre crop of
image_size x image_size taken (top-left at round((H - image_size) / 2), Python's round), and
its pixels made float32 in [0, 1], channels first; then normalised with the ImageNet mean and
standard deviation unless data.transform = "raw". That is torchvision's evaluation transform
`Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std)` on PIL images: torchvision's
`Resize` on a PIL image calls Pillow's `resize` with the same filter, which is always
antialiased (its `antialias` argument only changes tensors), and sizes the longer side and
places the crop the same way. torchvision itself is not needed.

The original code (Li et al.) has no ImageNet loader: data.transform = "original" is
"standard" here.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from losslandscape.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = "one folder per split (train; val or test), each with one sub-folder of images per class"


def split_folder(root: str | Path, split: str) -> Path:
    """The folder of `split`: root/train, or root/val (else root/test) for the test split."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data.root: no such folder {str(root)!r}; expected {LAYOUT}")
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise UserError(f"data.root: {str(root)!r} has no {' or '.join(names)} folder for the {split} split; "
                    f"expected {LAYOUT}")


def classes_of(folder: Path) -> list[str]:
    """The class names of a split's folder: its sub-folders, sorted."""
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise UserError(f"data.root: {str(folder)!r} has no class folders; expected one sub-folder of images "
                        "per class")
    return classes


@functools.lru_cache(maxsize=8)
def scan(root: str, split: str) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]]:
    """(class names, ((image path, class index), ...)) of one split, in torchvision's order."""
    folder = split_folder(root, split)
    classes = classes_of(folder)
    if split == "test" and (Path(root) / "train").is_dir():
        # the test split numbers its classes by its own folders: the same folders as train's, or
        # every index would name another class
        train = classes_of(Path(root) / "train")
        if train != classes:
            extra = sorted(set(classes) ^ set(train))
            raise UserError(f"data.root: {folder} and {Path(root) / 'train'} have different class folders "
                            f"({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''}); expected the same "
                            "classes in both splits")
    items = []
    for index, name in enumerate(classes):
        found = [os.path.join(top, f) for top, _, files in sorted(os.walk(folder / name, followlinks=True))
                 for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise UserError(f"data.root: the class folder {folder / name} has no images (expected files ending in "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
        items.extend((path, index) for path in found)
    return tuple(classes), tuple(items)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the shorter side `short_side` and the aspect ratio kept (longer side
    truncated, as torchvision's Resize(int))."""
    if width <= height:
        return short_side, int(short_side * height / width)
    return int(short_side * width / height), short_side


def load_image(path: str, image_size: int, normalise: bool) -> torch.Tensor:
    """One image as float32 (3, image_size, image_size): see the module's docstring."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open(path, "rb") as fh:
            img = Image.open(fh)
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"data.root: cannot read the image {path} ({exc})") from None
    short = round(image_size * 8 / 7)
    size = resized_size(*img.size, short)
    if size != img.size:
        img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    top, left = int(round((h - image_size) / 2.0)), int(round((w - image_size) / 2.0))
    img = img.crop((left, top, left + image_size, top + image_size))
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
    if normalise:
        x.sub_(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)).div_(torch.tensor(IMAGENET_STD).view(3, 1, 1))
    return x


class ImageFolder(Dataset):
    """One split of an image folder as a map-style Dataset of (image (3, S, S) float32, class index)."""

    def __init__(self, root: str, split: str, image_size: int, transform: str):
        self.root, self.split, self.image_size = root, split, image_size
        self.normalise = transform != "raw"
        self.classes, self.items = scan(str(Path(root).resolve()), split)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target = self.items[i]
        return load_image(path, self.image_size, self.normalise), target
