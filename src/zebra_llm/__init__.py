"""zebra-llm: long context for language models.

* Zebra: layerwise grouped local-global attention (Song et al., 2023).
* Dual Chunk Attention: training-free context extension (An et al., 2024).

Importing the package registers the ``zebra`` model type with transformers' Auto classes and the ``"zebra"``
attention implementation (see ``zebra_llm.modeling``). Guide: README.md and the pages under docs/.
"""

from . import attention, flops
from .dca import apply_dca, remove_dca
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
    "attention",
    "convert_checkpoint",
    "convert_to_zebra",
    "export_portable",
    "flops",
    "list_presets",
    "remove_dca",
]
