"""Lightning callback (extra ``lightning``)::

    from acdc.integrations.lightning import ACDCCallback
    trainer = lightning.pytorch.Trainer(max_epochs=100, accumulate_grad_batches=2,
                                        callbacks=[ACDCCallback(method="acdc", sparsity=0.9)])
    trainer.fit(module, train_loader)                  # or trainer.fit(..., ckpt_path="last.ckpt")

At train start the method is built from the module and its (single) optimizer with ``steps_per_epoch`` = optimizer
steps per epoch (``accumulate_grad_batches`` respected) and ``epochs`` = ``max_epochs`` (or ``max_steps`` /
``steps_per_epoch``). It steps from the optimizer's step post-hook, i.e. once per real optimizer step, also for
closure-driven optimizers (Lightning's automatic optimization, LBFGS). Masks are applied to gradients as backward
produces them (see :mod:`acdc.masking`), so the closure's backward, clipping and the update all see masked
gradients. The method state (masks bit-packed, no pickle) lives in the callback's checkpoint state, so
``Trainer.fit(ckpt_path=...)`` resumes masks and phase exactly.
"""

from __future__ import annotations

import math
from typing import Any

from ._common import MethodDriver

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - exercised only without the extra
    try:
        import pytorch_lightning as pl
    except ImportError as e:
        raise ImportError("acdc.integrations.lightning needs lightning: pip install 'acdc-train[lightning]'") from e


class ACDCCallback(pl.Callback):
    """Runs an acdc sparse-training method inside a Lightning ``Trainer``; same arguments as the HF callback."""

    def __init__(self, method: str = "acdc", sparsity: float = 0.9, schedule: Any = None,
                 **method_options: Any) -> None:
        self.driver = MethodDriver(method, sparsity, schedule, method_options)
        self._resume: dict[str, Any] | None = None
        self._step_hook = None

    @property
    def method(self):
        """The running :class:`acdc.methods.base.SparseMethod` (None before train start)."""
        return self.driver.method

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {"acdc_state": self.driver.state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict.get("acdc_state")  # applied at train start, once the method exists

    # ------------------------------------------------------------------ events
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"ACDCCallback: the module configures {len(trainer.optimizers)} optimizers; it "
                             "needs exactly one holding the prunable weights")
        optimizer = trainer.optimizers[0]
        accum = max(1, int(trainer.accumulate_grad_batches))
        n_batches = trainer.num_training_batches
        if not math.isfinite(n_batches) or n_batches < 1:
            raise ValueError("ACDCCallback: the train dataloader has no length; give it a __len__ (or use "
                             "limit_train_batches) so epochs can be counted in optimizer steps")
        steps_per_epoch = max(1, math.ceil(int(n_batches) / accum))
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epochs: float = trainer.max_epochs
        elif trainer.max_steps and trainer.max_steps > 0:
            epochs = trainer.max_steps / steps_per_epoch
        else:
            raise ValueError("ACDCCallback: set max_epochs or max_steps so the schedule knows the run's length")
        resumed = trainer.global_step > 0
        if resumed and self._resume is None:
            raise ValueError(f"ACDCCallback: the checkpoint at step {trainer.global_step} has no ACDCCallback "
                             "state (it was saved without this callback); start a fresh run instead")
        where = f"the checkpoint at step {trainer.global_step}"
        method = self.driver.build(pl_module, optimizer, steps_per_epoch, epochs,
                                   self._resume if resumed else None, where)
        self._resume = None
        if method.steps != trainer.global_step:
            raise ValueError(f"ACDCCallback: {where} holds the method at step {method.steps}; resume from an "
                             "intact checkpoint of this run")
        if self._step_hook is not None:
            self._step_hook.remove()
        # after the update (and after the method's own post-hook re-masking weights): one method step
        self._step_hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: self.driver.step())

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._step_hook is not None:
            self._step_hook.remove()
            self._step_hook = None
        self.driver.finalize()
