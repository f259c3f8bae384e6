"""Hugging Face ``transformers.Trainer`` callback (extra ``hf``)::

    from acdc.integrations.hf import ACDCCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[ACDCCallback(method="acdc", sparsity=0.9, schedule="paper_imagenet")])
    trainer.train()                                    # or trainer.train(resume_from_checkpoint=True)

At train begin the method is built from the Trainer's model and optimizer with ``steps_per_epoch`` = optimizer
steps per epoch (``gradient_accumulation_steps`` respected, as the Trainer counts them) and ``epochs`` =
``max_steps / steps_per_epoch``; it steps after each optimizer step (``on_optimizer_step``). Its state (masks
bit-packed, no pickle) is written into each ``checkpoint-N/trainer_state.json`` and restored on
``resume_from_checkpoint``. Gradients of pruned weights are zeroed as backward produces them (see
:mod:`acdc.masking`), so the Trainer's gradient clipping sees the sparse model's gradients, as in a plain loop.
"""

from __future__ import annotations

import math
from typing import Any

from ._common import MethodDriver

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("acdc.integrations.hf needs transformers: pip install 'acdc-train[hf]'") from e


class ACDCCallback(TrainerCallback, ExportableState):
    """Runs an acdc sparse-training method (``"acdc"``, ``"gmp"``, ``"rigl"``, ...) inside a HF ``Trainer``.

    ``method_options`` are the method's options as in a recipe's ``method:`` block (``structure``,
    ``distribution``, ``include``, ``exclude``, ``update_every``, ...). Arguments must be plain values, since
    checkpoints store them.
    """

    def __init__(self, method: str = "acdc", sparsity: float = 0.9, schedule: Any = None,
                 **method_options: Any) -> None:
        self.driver = MethodDriver(method, sparsity, schedule, method_options)

    @property
    def method(self):
        """The running :class:`acdc.methods.base.SparseMethod` (None before train begin)."""
        return self.driver.method

    # ------------------------------------------------------------------ checkpoint state (ExportableState)
    def state(self) -> dict[str, Any]:
        return {"args": dict(self.driver.config), "attributes": {"acdc_state": self.driver.state()}}

    def _saved_state(self, state: Any) -> dict[str, Any] | None:
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(saved, list):  # the Trainer keeps a list when several callbacks of one class exist
            saved = saved[-1] if saved else None
        return (saved or {}).get("attributes", {}).get("acdc_state")

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        if model is None or optimizer is None:
            raise ValueError("ACDCCallback: the Trainer passed no model/optimizer at train begin; use "
                             "transformers.Trainer (or pass optimizers=(optimizer, scheduler))")
        accum = max(1, int(args.gradient_accumulation_steps))
        n_batches = len(train_dataloader) if train_dataloader is not None else 0
        if n_batches:
            steps_per_epoch = max(1, math.ceil(n_batches / accum))  # the Trainer's num_update_steps_per_epoch
        else:  # an iterable dataset: the Trainer counts max_steps as one "epoch"
            steps_per_epoch = max(1, int(state.max_steps))
        epochs = state.max_steps / steps_per_epoch
        saved = self._saved_state(state)
        if state.global_step > 0 and saved is None:  # resuming from a checkpoint made without the callback
            raise ValueError(f"ACDCCallback: the checkpoint at step {state.global_step} has no ACDCCallback "
                             "state (it was saved without this callback); start a fresh run instead")
        where = f"the checkpoint at step {state.global_step}"
        method = self.driver.build(model, optimizer, steps_per_epoch, epochs,
                                   saved if state.global_step > 0 else None, where)
        if method.steps != state.global_step:
            raise ValueError(f"ACDCCallback: {where} holds the method at step {method.steps}; resume from an "
                             "intact checkpoint of this run")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.driver.step()

    def on_train_end(self, args, state, control, **kwargs):
        self.driver.finalize()
