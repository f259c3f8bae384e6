"""ImageNet-style ``path/{train,val}/<class>/<image>`` folders, read with torchvision."""

from __future__ import annotations

from pathlib import Path

from .base import DataBundle, as_bool, as_pos_int, data_path

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _classes(split_dir: Path, name: str) -> list[str]:
    """Class folder names of one split, checking that each holds at least one image."""
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{name}: {str(split_dir)!r} has no class folders; expected {split_dir}/<class>/<image files>"
        )
    for c in classes:
        if not any(f.suffix.lower() in IMG_EXTENSIONS for f in (split_dir / c).iterdir() if f.is_file()):
            raise ValueError(
                f"{name}: class folder {str(split_dir / c)!r} has no images ({', '.join(IMG_EXTENSIONS)}); "
                f"add images or remove the folder"
            )
    return classes


def build_imagefolder(cfg: dict, seed: int) -> DataBundle:
    """Train: RandomResizedCrop(image_size) + flip; val: Resize(image_size*256/224) + CenterCrop."""
    try:
        from torchvision import datasets, transforms
        from torchvision.datasets.folder import pil_loader
    except ImportError as e:
        raise ImportError(
            f"dataset 'imagefolder' needs torchvision ({e}); `pip install 'acdc-train[vision]'`"
        ) from e
    name = "imagefolder"
    root = data_path(cfg, "a folder with train/ and val/ subfolders")
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(
                f"{name}: missing split folder {str(root / split)!r}; data.path must contain "
                f"train/<class>/... and val/<class>/..."
            )
    size = as_pos_int(cfg.get("image_size", 224), "image_size")
    augment = as_bool(cfg.get("augment", True), "augment")
    train_classes = _classes(root / "train", name)
    val_classes = _classes(root / "val", name)
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise ValueError(
            f"{name}: class folders of {str(root / 'train')!r} and {str(root / 'val')!r} differ "
            f"(only in train: {only_t[:10]}, only in val: {only_v[:10]}); both splits need the same classes"
        )
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    val_tf = transforms.Compose([
        transforms.Resize(round(size * 256 / 224)), transforms.CenterCrop(size), transforms.ToTensor(), norm,
    ])
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm,
    ]) if augment else val_tf

    # pil_loader: module-level (picklable for DataLoader workers), converts to RGB
    train = datasets.ImageFolder(str(root / "train"), transform=train_tf, loader=pil_loader)
    val = datasets.ImageFolder(str(root / "val"), transform=val_tf, loader=pil_loader)
    return DataBundle(
        train=train,
        val=val,
        num_classes=len(train_classes),
        input_shape=(3, size, size),
        name=name,
        info={"n_train": len(train), "n_val": len(val), "classes": train_classes, "path": str(root),
              "augment": augment, "image_size": size},
    )
