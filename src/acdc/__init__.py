"""acdc-train: AC/DC (Alternating Compressed/DeCompressed) sparse-dense co-training for any PyTorch model."""

from . import masks
from .methods.acdc import ACDC
from .schedule import Schedule
from .selection import Target
from .targets import prunable_parameters

__version__ = "0.1.0"
__all__ = ["ACDC", "Schedule", "Target", "load_compressed", "masks", "prunable_parameters", "save_compressed",
           "__version__"]


def __getattr__(name: str):
    # the deployment layer sits above the core: import it only when asked for
    if name in ("load_compressed", "save_compressed"):
        from .export import compressed

        return getattr(compressed, name)
    raise AttributeError(f"module 'acdc' has no attribute {name!r}")
