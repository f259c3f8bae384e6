"""Language-modelling datasets: word-level WikiText / PTB and character-level text files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from .base import DataBundle, LMWindows, as_fraction, as_pos_int, data_path

EOS, UNK = "<eos>", "<unk>"
_SPLIT_FILES = {
    "train": ("wiki.train.tokens", "ptb.train.txt"),
    "valid": ("wiki.valid.tokens", "ptb.valid.txt"),
    "test": ("wiki.test.tokens", "ptb.test.txt"),
}


def _words(path: Path) -> Iterator[str]:
    """Whitespace tokens of a file with one ``<eos>`` after every line (blank lines included)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            yield from line.split()
            yield EOS


def _vocab_and_tokens(path: Path) -> tuple[list[str], dict[str, int], torch.Tensor]:
    """Vocabulary of a file (``<eos>``, ``<unk>``, then by descending count, ties alphabetical) and its tokens.

    One pass over the file: words get ids in order of first appearance, renumbered afterwards into the
    vocabulary's order. Returns (itos, stoi, token ids).
    """
    first_seen: dict[str, int] = {}
    ids = np.fromiter((first_seen.setdefault(w, len(first_seen)) for w in _words(path)), dtype=np.int64)
    counts = np.bincount(ids, minlength=len(first_seen)).tolist()
    specials = [EOS, UNK]
    rest = sorted((w for w in first_seen if w not in specials), key=lambda w: (-counts[first_seen[w]], w))
    itos = specials + rest
    stoi = {w: i for i, w in enumerate(itos)}
    renumber = np.fromiter((stoi[w] for w in first_seen), dtype=np.int64, count=len(first_seen))
    return itos, stoi, torch.from_numpy(renumber[ids])


def _encode(path: Path, stoi: dict[str, int], unk: int) -> torch.Tensor:
    get = stoi.get
    return torch.from_numpy(np.fromiter((get(w, unk) for w in _words(path)), dtype=np.int64))


def _context_stride(cfg: dict) -> tuple[int, int]:
    context = as_pos_int(cfg.get("context", 64), "context")
    return context, as_pos_int(cfg.get("stride", context), "stride")


def _windows_or_error(tokens: torch.Tensor, context: int, stride: int, what: str) -> LMWindows:
    ds = LMWindows(tokens, context, stride)
    if len(ds) == 0:
        raise ValueError(
            f"{what} has only {len(tokens)} tokens, fewer than context+1 = {context + 1}; "
            f"use a smaller data.context or a larger file"
        )
    return ds


def build_wikitext(cfg: dict, seed: int) -> DataBundle:
    """Word-level LM data; vocabulary from the train split, unknown words -> ``<unk>``."""
    root = data_path(cfg, "the folder with wiki.{train,valid,test}.tokens")
    context, stride = _context_stride(cfg)
    eval_split = cfg.get("eval_split", "valid")
    if eval_split not in ("valid", "test"):
        raise ValueError(f"data option 'eval_split' must be 'valid' or 'test', got {eval_split!r}")

    def find(split: str) -> Path:
        for fname in _SPLIT_FILES[split]:
            if (root / fname).is_file():
                return root / fname
        raise FileNotFoundError(
            f"wikitext: missing {split} split in {str(root)!r}: expected "
            f"{' or '.join(_SPLIT_FILES[split])}; point data.path at the extracted wikitext-2/-103 (or PTB) folder"
        )

    train_file, eval_file = find("train"), find(eval_split)
    itos, stoi, train_tokens = _vocab_and_tokens(train_file)
    unk = stoi[UNK]
    eval_tokens = _encode(eval_file, stoi, unk)
    return DataBundle(
        train=_windows_or_error(train_tokens, context, stride, str(train_file)),
        val=_windows_or_error(eval_tokens, context, context, str(eval_file)),
        num_classes=len(itos),
        input_shape=(context,),
        task="lm",
        name="wikitext",
        info={
            "vocab": itos, "n_train_tokens": len(train_tokens), "n_val_tokens": len(eval_tokens),
            "eval_split": eval_split, "unk_rate_val": float((eval_tokens == unk).float().mean()),
            "path": str(root), "context": context,
        },
    )


def build_chars(cfg: dict, seed: int) -> DataBundle:
    """Character-level LM over one UTF-8 file; the last ``val_fraction`` of it is validation."""
    f = data_path(cfg, "a UTF-8 text file", file=True, hint="; point it at a UTF-8 text file")
    context, stride = _context_stride(cfg)
    val_fraction = as_fraction(cfg.get("val_fraction", 0.1), "val_fraction")
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"chars: {str(f)!r} is not valid UTF-8 ({e})") from e
    if not text:
        raise ValueError(f"chars: {str(f)!r} is empty")
    # code points in one vectorised step; np.unique sorts them, i.e. the vocabulary is sorted(set(text))
    codes, tokens_np = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32), return_inverse=True)
    itos = [chr(c) for c in codes.tolist()]
    tokens = torch.from_numpy(tokens_np.reshape(-1).astype(np.int64))
    n_val = int(len(tokens) * val_fraction)
    train_tokens, val_tokens = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    return DataBundle(
        train=_windows_or_error(train_tokens, context, stride, f"train part of {str(f)!r}"),
        val=_windows_or_error(val_tokens, context, context, f"validation part (val_fraction={val_fraction}) "
                              f"of {str(f)!r}"),
        num_classes=len(itos),
        input_shape=(context,),
        task="lm",
        name="chars",
        info={"vocab": itos, "n_train_tokens": len(train_tokens), "n_val_tokens": len(val_tokens),
              "path": str(f), "context": context},
    )
