"""zebra-llm: long context for language models.

* Zebra: layerwise grouped local-global attention (Song et al., 2023).
* Dual Chunk Attention: training-free context extension (An et al., 2024).
"""

from . import attention
from .dca import apply_dca, remove_dca

__version__ = "0.1.0"

__all__ = ["attention", "apply_dca", "remove_dca", "__version__"]
