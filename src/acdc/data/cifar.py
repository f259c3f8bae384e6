"""CIFAR-10 / CIFAR-100 from the official python pickle folders.

Images stay uint8 in memory and are augmented with batched torch ops (see UInt8ImageDataset),
which keeps data loading a small fraction of the epoch even on 2 CPU cores.

The batches are pickles, so they are read with :class:`SafeUnpickler`: it builds only plain containers, numbers,
strings and numpy arrays, and refuses every other global (a crafted file cannot run code).
"""

from __future__ import annotations

import _codecs
import importlib
import pickle
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import torch

from .base import DataBundle, UInt8ImageDataset, as_bool

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class _Spec(NamedTuple):
    folder: str
    train_files: list[str]
    test_files: list[str]
    label_key: bytes
    meta_file: str
    names_key: bytes
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_SPEC = {
    "cifar10": _Spec("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                     b"labels", "batches.meta", b"label_names", 10, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": _Spec("cifar-100-python", ["train"], ["test"], b"fine_labels", "meta", b"fine_label_names", 100,
                      CIFAR100_MEAN, CIFAR100_STD),
}


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2 keeps the implementation in numpy._core; pickles may name either path
        core_mod = importlib.import_module("numpy._core.multiarray")
        num_mod = importlib.import_module("numpy._core.numeric")
    except ImportError:  # pragma: no cover - numpy 1.x
        core_mod = importlib.import_module("numpy.core.multiarray")
        num_mod = importlib.import_module("numpy.core.numeric")
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                       ("_codecs", "encode"): _codecs.encode}  # protocol-2 bytes
    for core in ("numpy.core", "numpy._core"):
        out[(f"{core}.multiarray", "_reconstruct")] = core_mod._reconstruct
        out[(f"{core}.multiarray", "scalar")] = core_mod.scalar
        out[(f"{core}.numeric", "_frombuffer")] = num_mod._frombuffer
    return out


_ALLOWED = _numpy_globals()


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for data files: only numpy array/dtype/scalar reconstruction and plain containers.

    Any other global (``os.system``, ``builtins.exec``, a class with ``__reduce__``...) raises
    ``pickle.UnpicklingError`` before it is looked up, so loading a crafted file cannot run code.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only numpy arrays and plain "
                                         "containers are allowed in a data file)") from None


def safe_load(fh: IO[bytes]) -> Any:
    """``pickle.load(fh, encoding="bytes")`` restricted to what :class:`SafeUnpickler` allows."""
    return SafeUnpickler(fh, encoding="bytes").load()


def _resolve_dir(path: object, name: str, folder: str, first_file: str) -> Path:
    if path is None:
        raise ValueError(f"dataset {name!r} needs 'path': the extracted '{folder}/' folder")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(
            f"{name}: path {str(p)!r} does not exist; set data.path to the extracted '{folder}/' folder "
            f"(from the python version of the dataset)"
        )
    if not (p / first_file).exists() and (p / folder / first_file).exists():
        p = p / folder  # accept the parent folder too
    return p


def _load_pickle(f: Path, name: str, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not f.is_file():
        raise FileNotFoundError(
            f"{name}: missing file {str(f)!r}; data.path must be the extracted python-version folder "
            f"containing it"
        )
    try:
        with open(f, "rb") as fh:
            d = safe_load(fh)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign pickle raises almost anything
        raise ValueError(f"{name}: cannot unpickle {str(f)!r} ({e}); is it the python version of CIFAR?") from e
    if not isinstance(d, dict) or b"data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise ValueError(
            f"{name}: {str(f)!r} lacks the keys b'data' and {label_key!r} (found {keys}); "
            f"is it a {name} python-version batch?"
        )
    data = np.asarray(d[b"data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{name}: {str(f)!r} b'data' has shape {data.shape}, expected (N, 3072)")
    if len(data) != len(labels):
        raise ValueError(f"{name}: {str(f)!r} has {len(data)} images but {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def build_cifar(cfg: dict, seed: int) -> DataBundle:
    """CIFAR-10/100; train augmentation = random crop 32 (pad 4) + horizontal flip."""
    name = cfg["name"]
    spec = _SPEC[name]
    n_classes = spec.num_classes
    augment = as_bool(cfg.get("augment", True), "augment")
    root = _resolve_dir(cfg.get("path"), name, spec.folder, spec.train_files[0])

    def load(files: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [_load_pickle(root / f, name, spec.label_key) for f in files]
        x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n_classes):
            raise ValueError(f"{name}: labels in {root} outside 0..{n_classes - 1}")
        return x, y

    xtr, ytr = load(spec.train_files)
    xte, yte = load(spec.test_files)
    mean, std = spec.mean, spec.std
    info: dict = {"n_train": len(ytr), "n_val": len(yte), "augment": augment, "path": str(root),
                  "mean": mean, "std": std}
    meta = root / spec.meta_file
    if meta.is_file():  # optional (class names only), but a present file must be a valid one
        try:
            with open(meta, "rb") as fh:
                m = safe_load(fh)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign pickle raises almost anything
            raise ValueError(f"{name}: cannot unpickle {str(meta)!r} ({e}); is it the python version of CIFAR? "
                             "(delete the file to train without class names)") from None
        if not isinstance(m, dict) or not isinstance(m.get(spec.names_key), list):
            raise ValueError(f"{name}: {str(meta)!r} lacks the key {spec.names_key!r} (a list of class names); "
                             "delete the file to train without class names")
        info["classes"] = [c.decode(errors="replace") if isinstance(c, bytes) else str(c) for c in m[spec.names_key]]
    return DataBundle(
        train=UInt8ImageDataset(xtr, ytr, mean, std, augment=augment),
        val=UInt8ImageDataset(xte, yte, mean, std, augment=False),
        num_classes=n_classes,
        input_shape=(3, 32, 32),
        name=name,
        info=info,
    )


def write_cifar(root: Path, name: str = "cifar10", n_train: int = 100, n_test: int = 20, seed: int = 0) -> Path:
    """Write random uint8 images in ``name``'s python-version format to ``root/<folder>`` (for tests, benchmarks).

    The train images are spread over the train files as evenly as possible; the meta file names the classes
    ``c0``, ``c1``, ... Returns the dataset folder (what ``data.path`` points at).
    """
    spec = _SPEC[name]
    rng = np.random.default_rng(seed)
    d = Path(root) / spec.folder
    d.mkdir(parents=True)
    k = len(spec.train_files)
    sizes = [(f, n_train // k + (i < n_train % k)) for i, f in enumerate(spec.train_files)]
    for f, n in sizes + [(f, n_test) for f in spec.test_files]:
        with open(d / f, "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                         spec.label_key: rng.integers(0, spec.num_classes, n).tolist()}, fh)
    with open(d / spec.meta_file, "wb") as fh:
        pickle.dump({spec.names_key: [f"c{i}".encode() for i in range(spec.num_classes)]}, fh)
    return d
