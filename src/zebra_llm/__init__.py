"""zebra-llm: long context for language models.

* Zebra: layerwise grouped local-global attention (Song et al., 2023).
* Training-free context extension of RoPE models: Dual Chunk Attention (An et al., 2024), SelfExtend,
  ReRoPE and STRING, one kernel for all (``zebra_llm.extensions``).

Importing the package registers the ``zebra`` model type with transformers' Auto classes and the ``"zebra"``
attention implementation (see ``zebra_llm.modeling``). Guide: README.md and the pages under docs/.
"""

from . import attention, extensions, flops
from .dca import apply_dca, remove_dca
from .extensions import apply_extension, remove_extension
from .modeling import (
    ZebraConfig,
    ZebraForCausalLM,
    ZebraModel,
    convert_checkpoint,
    convert_to_zebra,
    export_portable,
    list_presets,
)

__version__ = "0.1.0"

__all__ = [
    "ZebraConfig",
    "ZebraForCausalLM",
    "ZebraModel",
    "__version__",
    "apply_dca",
    "apply_extension",
    "attention",
    "convert_checkpoint",
    "convert_to_zebra",
    "extensions",
    "export_portable",
    "flops",
    "list_presets",
    "remove_dca",
    "remove_extension",
]
