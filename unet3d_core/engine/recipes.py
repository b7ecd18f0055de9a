"""Training recipes: complete presets of how a network is trained, chosen with ``--recipe``.

A recipe gives a value to every flag it names; a flag given on the command
line still wins, and ``run.json`` records the recipe and every resolved value,
so a resumed run keeps them. Flags a recipe does not name take their plain
defaults (``run_flags.NETWORK_FLAGS`` / ``TRAINING_FLAGS``).

- ``seed``: the reference port's recipe, unchanged: uniform random crops, batch
  1, Adam at a constant 2e-4, Dice + cross-entropy over exclusive labels, and
  with ``--augment`` its flip on one axis and brightness shift. Sample for
  sample what unet3d trained before recipes existed, so runs made then resume
  as ``seed``.
- ``nnunet``: the recipe nnU-Net (v2.8.1) trains a 3D U-Net with, as far as
  the same network allows (sources in docs/training.md, "Recipes"): a third of
  each batch centred on foreground, rotation/scaling/mirroring and six
  intensity augmentations, SGD with Nesterov momentum 0.99 from 0.01 with
  poly decay, weight decay 3e-5, gradient norms clipped at 12, deep
  supervision, and the BraTS path's region outputs (WT/TC/ET sigmoids with
  Dice + BCE).
"""
from __future__ import annotations

from typing import Dict

RECIPE_NAMES = ("nnunet", "seed")
DEFAULT_RECIPE = "nnunet"
# The recipe of runs whose run.json names none: they were trained before recipes, i.e. the seed's way.
LEGACY_RECIPE = "seed"

RECIPES: Dict[str, Dict[str, object]] = {
    "seed": {
        "batch_size": 1,
        "augmentation": "none",
        "oversample_foreground": 0.0,
        "elastic_probability": 0.0,
        "optimizer": "adam",
        "learning_rate": 0.0002,
        "lr_schedule": "constant",
        "momentum": 0.99,  # unused by Adam; recorded so every run.json has the same keys
        "weight_decay": 0.0,
        "grad_clip": 0.0,
        "loss": "dice+ce",
        "target": "labels",
        "deep_supervision": False,
    },
    "nnunet": {
        "batch_size": 2,
        "augmentation": "nnunet",
        # nnU-Net's oversample_foreground_percent: the last round(0.33 x batch) samples of a batch.
        "oversample_foreground": 0.33,
        "elastic_probability": 0.0,  # nnU-Net v2.8.1 leaves elastic deformation off
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "lr_schedule": "poly",
        "momentum": 0.99,
        "weight_decay": 3e-5,
        "grad_clip": 12.0,
        "loss": "dice+ce",
        "target": "regions",
        "deep_supervision": True,
    },
}


def preset(recipe: str) -> Dict[str, object]:
    """The flag values recipe ``recipe`` sets (a copy)."""
    return dict(RECIPES[recipe])
