"""``zebra lm-eval ...``: lm-evaluation-harness's CLI with ``--model zebra`` registered."""

from __future__ import annotations

import typer


def lm_eval(ctx: typer.Context) -> None:
    """Run lm-evaluation-harness with --model zebra (every argument goes to lm-eval, e.g.
    zebra lm-eval run --model zebra --model_args pretrained=smollm2,method=dca --tasks ruler)."""
    try:
        from zebra_llm.eval.lm_eval import main
    except ImportError as e:
        raise ValueError(str(e)) from None
    main(list(ctx.args))


SETTINGS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}
