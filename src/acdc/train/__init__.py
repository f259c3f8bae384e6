"""Training layer: recipes, the epoch loop, checkpoints. Built on the core (schedule, masks, methods)."""

from .checkpoint import CheckpointError, load_model, save_model
from .loop import Trainer, TrainResult, evaluate, train
from .recipe import Recipe, RecipeError, load_recipe, parse_recipe

__all__ = ["CheckpointError", "Recipe", "RecipeError", "TrainResult", "Trainer", "evaluate", "load_model",
           "load_recipe", "parse_recipe", "save_model", "train"]
