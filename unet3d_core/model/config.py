"""Run configuration that must be importable without TensorFlow (the CLI's --help, validation)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from unet3d_core.errors import ConfigError

EXEC_MODES = ("train", "evaluate", "train_and_evaluate", "predict")
LR_SCHEDULES = ("constant", "cosine", "poly")
OPTIMIZERS = ("sgd", "adam")
AUGMENTATIONS = ("nnunet", "seed", "none")
LOSSES = ("dice", "ce", "dice+ce")
NORMS = ("instancenorm", "groupnorm", "batchnorm", "none")
# --target: what the network's outputs are (softmax over exclusive labels, or one sigmoid per region).
TARGETS = ("labels", "regions")
# --lesion_rules: the BraTS years whose lesion-wise rules unet3d_core.evaluation.lesions implements.
LESION_RULE_CHOICES = ("auto", "2023", "2024", "2025", "2026")


@dataclass(frozen=True)
class ModelConfig:
    """Everything size-like about the network, so tests can run it tiny."""

    in_channels: int = 4
    num_classes: int = 4
    base_filters: int = 32
    max_filters: int = 320
    depth: int = 6  # number of resolutions, the bottleneck included
    norm: str = "instancenorm"
    groups: int = 16  # group norm only
    target: str = "labels"  # "labels": softmax over num_classes; "regions": one sigmoid per region
    regions: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()  # --target regions: (name, internal labels) per output
    deep_supervision: bool = False  # training only: auxiliary outputs on the decoder's lower resolutions

    @property
    def outputs(self) -> int:
        """Channels of the network's last layer."""
        return len(self.regions) if self.target == "regions" else self.num_classes

    @property
    def widths(self) -> List[int]:
        return [min(self.base_filters * 2 ** level, self.max_filters) for level in range(self.depth)]

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (the total down-sampling)."""
        return 2 ** (self.depth - 1)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError("--target: '{}' is not one of {}".format(self.target, ", ".join(TARGETS)))
        if self.target == "regions" and not self.regions:
            raise ConfigError("--target regions: the data set defines no regions")
        if self.norm not in NORMS:
            raise ConfigError("--norm: '{}' is not one of {}".format(self.norm, ", ".join(NORMS)))
        if self.depth < 2:
            raise ConfigError("--depth must be at least 2, got {}".format(self.depth))
        if self.base_filters < 1 or self.max_filters < self.base_filters:
            raise ConfigError("--base_filters must be >= 1 and <= --max_filters")
