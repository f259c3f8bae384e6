"""AC/DC inside a Hugging Face ``Trainer``: a tiny Llama (built from a config, nothing downloaded) learns
character-level language modelling on local text (this repository's README and design notes by default).

    python examples/hf_trainer_acdc.py [--text FILE ...] [--max-chars 40000] [--out DIR] [--sparsity 0.9]

Needs the ``hf`` extra. Prints the phase timeline, the achieved sparsity and the validation loss of the final
(sparse) model; writes checkpoints to ``--out`` (resume with ``--resume``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from acdc.integrations.hf import ACDCCallback

ROOT = Path(__file__).resolve().parents[1]


def char_windows(text: str, seq: int) -> tuple[list[dict], list[dict], int]:
    """Character ids, cut into non-overlapping windows; the last 10% of the text is the validation split."""
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text], dtype=torch.long)
    windows = ids[: len(ids) // seq * seq].view(-1, seq)
    n_val = max(1, len(windows) // 10)
    as_rows = [{"input_ids": w, "labels": w} for w in windows]
    return as_rows[:-n_val], as_rows[-n_val:], len(vocab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", nargs="+", default=[str(ROOT / "README.md"), str(ROOT / "docs" / "DESIGN.md")])
    ap.add_argument("--out", default="runs/hf_example")
    ap.add_argument("--max-chars", type=int, default=40000, help="use the first N characters (CPU time)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--resume", action="store_true")
    a = ap.parse_args()

    text = "\n".join(Path(p).read_text(encoding="utf-8") for p in a.text)[: a.max_chars]
    train, val, vocab = char_windows(text, seq=64)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                         max_position_embeddings=64))
    # AC/DC over 6 epochs: dense warm-up D0-1, then S2, D3 and the final sparse phase S4-5
    schedule = {"warmup": 2, "sparse": 1, "dense": 1, "final_sparse": 2}
    acdc = ACDCCallback(method="acdc", sparsity=a.sparsity, schedule=schedule, distribution="global")
    args = TrainingArguments(output_dir=a.out, num_train_epochs=6, per_device_train_batch_size=16,
                             gradient_accumulation_steps=2, learning_rate=1e-2, lr_scheduler_type="cosine",
                             warmup_steps=0.05, save_strategy="epoch", save_total_limit=1, logging_steps=10,
                             eval_strategy="epoch", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val, callbacks=[acdc])
    trainer.train(resume_from_checkpoint=a.resume or None)

    m = acdc.method
    print("phases:", m.schedule.describe())
    print(f"final phase: {m.phase}, sparsity of the prunable weights: {m.sparsity():.4f} "
          f"({len(m.masked.params)} Linear weights)")
    print(f"validation loss of the sparse model: {trainer.evaluate()['eval_loss']:.4f}")


if __name__ == "__main__":
    main()
