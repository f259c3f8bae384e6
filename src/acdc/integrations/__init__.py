"""Optional integrations: TensorBoard logging, Hugging Face ``Trainer`` and Lightning callbacks.

Each submodule imports its framework lazily (only when used), so ``import acdc`` never needs the extras
``tensorboard``, ``hf`` or ``lightning``.
"""
