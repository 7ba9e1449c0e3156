"""Training: pretraining from scratch, long context adaptation (LCAT) and long
instruction tuning (LIT), on one process or many (``torchrun``, DDP, FSDP2).
Guide: docs/training.md.

Each kind is one function taking a typed config (a dataclass, a dict, or a
YAML/TOML/JSON file path)::

    from zebra_llm.train import PretrainConfig, pretrain
    result = pretrain(PretrainConfig.load("pretrain.yaml", ["train.steps=100"]))
"""

from .config import (
    ConfigError,
    CurriculumStage,
    DataOptions,
    EngineOptions,
    InstructionDataOptions,
    LCATConfig,
    LCATModelOptions,
    LITConfig,
    LITModelOptions,
    LoraOptions,
    OptimOptions,
    PretrainConfig,
    PretrainModelOptions,
    RunOptions,
)
from .engine import NonFiniteLossError, TrainResult, Trainer
from .lcat import lcat
from .lit import lit
from .pretrain import pretrain
from .schedule import lr_factor

__all__ = [
    "ConfigError",
    "CurriculumStage",
    "DataOptions",
    "EngineOptions",
    "InstructionDataOptions",
    "LCATConfig",
    "LCATModelOptions",
    "LITConfig",
    "LITModelOptions",
    "LoraOptions",
    "NonFiniteLossError",
    "OptimOptions",
    "PretrainConfig",
    "PretrainModelOptions",
    "RunOptions",
    "TrainResult",
    "Trainer",
    "lcat",
    "lit",
    "lr_factor",
    "pretrain",
]
