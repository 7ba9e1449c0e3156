"""lm-evaluation-harness integration: any model with any method, as ``--model zebra``.

lm-evaluation-harness (0.4.x, ``pip install -e ".[eval]"``) finds models in its
registry; importing this module registers ``zebra``, an ``HFLM`` around the
model that :func:`~zebra_llm.eval.loaded.load_with_method` loads. The harness
has no plugin discovery, so run it through this module (or ``zebra lm-eval``),
which registers the model and then hands every argument to lm-eval's own CLI::

    python -m zebra_llm.eval.lm_eval run --model zebra \\
        --model_args pretrained=smollm2,method=dca --tasks ruler --device cpu
    zebra lm-eval run --model zebra --model_args '{"pretrained": "smollm2", "method": "zebra:layer_group_size=4,window=512"}' --tasks longbench

In ``key=value,key=value`` model arguments, separate a method's own options
with ``;`` (``method=yarn:factor=4;beta_fast=16``) or pass JSON as above.
From Python::

    import lm_eval
    from zebra_llm.eval.lm_eval import ZebraLM

    lm = ZebraLM(pretrained="smollm2", method="yarn:factor=4", device="cpu")
    lm_eval.simple_evaluate(model=lm, tasks=["ruler"], ...)
"""

from __future__ import annotations

import sys

try:
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "zebra_llm.eval.lm_eval needs lm-evaluation-harness: pip install 'zebra-llm[eval]' (lm-eval>=0.4.5,<0.5)"
    ) from e

from .loaded import load_with_method

# A method without a length limit (DCA) still needs a context size for the harness's truncation.
UNLIMITED_CONTEXT_MULTIPLE = 16


@register_model("zebra")
class ZebraLM(HFLM):
    """``HFLM`` over a model loaded by zebra_llm with a context-extension method applied.

    ``pretrained``: ``smollm2``, a directory, a ``.gguf`` file or a hub name;
    ``method``: a method spec (``none``, ``dca``, ``yarn:factor=4`` ...);
    ``max_length``: the harness's context (default: the method's length limit, or
    16x the trained context for methods without one).
    """

    def __init__(
        self,
        pretrained: str = "smollm2",
        method: str = "none",
        dtype: str = "float32",
        device: str | None = "cpu",
        max_length: int | None = None,
        **kwargs,
    ):
        self.zebra = load_with_method(str(pretrained), str(method), dtype=dtype, device=device)
        if max_length is None:
            max_length = self.zebra.max_length or UNLIMITED_CONTEXT_MULTIPLE * self.zebra.info["trained_context"]
        super().__init__(
            pretrained=self.zebra.model,
            tokenizer=self.zebra.tokenizer,
            device=device,
            max_length=int(max_length),
            **kwargs,
        )


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with ``--model zebra`` registered."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
