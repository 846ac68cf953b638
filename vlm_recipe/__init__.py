"""The training recipe of the embedded VLM (``gemma-3-270m-vlm``): not part of the installed library.

``taskvec`` ships the model definition, its assembly and the trained weights
(``taskvec/embedded/``); this folder of a source checkout holds what made those weights, and runs
from the repository root::

    python -m vlm_recipe                  # retrain the shipped weights (< 30 min on 2 idle cores)
    python -m vlm_recipe --quick          # every stage, a few steps each (a smoke run)
    python -m vlm_recipe --recipe v6      # replay an earlier recipe, recorded in vlm_recipe/recipes/

See ``docs/embedded-vlm.md`` for the recipe and the model card.
"""

from .config import STAGES, TrainConfig, TrainResult, load_recipe, recipe_names
from .trainer import export, train

__all__ = ["export", "load_recipe", "recipe_names", "STAGES", "train", "TrainConfig", "TrainResult"]
