"""acdc-train: AC/DC (Alternating Compressed/DeCompressed) sparse-dense co-training for any PyTorch model."""

from . import masks
from .methods.acdc import ACDC
from .schedule import Schedule
from .targets import Target, prunable_parameters

__version__ = "0.1.0"
__all__ = ["ACDC", "Schedule", "Target", "masks", "prunable_parameters", "__version__"]
