"""The README's main job: a short method comparison on the embedded defaults.

Perplexity of SmolLM2-135M (trained context 8192) on the first tokens of the
standard library's ``_pydecimal.py`` at 2k (inside its trained context) and
12k (past it), for the unmodified model, the three rope-scaling baselines
(factor 2) and DCA, side by side: the DCA paper's Table 1 in miniature. 12k is
about where the unmodified model starts to fail on this text (measured in
docs/benchmarks.md), so the comparison shows something while one 12k forward
per method keeps the run at a few minutes on a CPU. The full 4k..32k
comparison is ``zebra eval ppl`` with longer ``--lengths`` (docs/cli.md).
"""

from __future__ import annotations

from pathlib import Path

from .perplexity import PerplexityConfig, run_perplexity
from .report import report

DEMO_METHODS = ("none", "linear:factor=2", "dynamic:factor=2", "yarn:factor=2", "dca")
DEMO_LENGTHS = (2048, 12288)


def run_demo(out_dir="results/demo", *, model: str = "smollm2", methods=DEMO_METHODS, lengths=DEMO_LENGTHS,
             progress: bool = True) -> tuple[str, list[Path], Path]:
    """Run the comparison; returns (Markdown table, figure paths, results path)."""
    out_dir = Path(out_dir)
    config = PerplexityConfig(model=model, methods=list(methods), lengths=list(lengths), doc_limit=1)
    output = out_dir / "ppl.json"
    run_perplexity(config, output, progress=progress)
    text, figures = report([output], out_dir=out_dir)
    return text, figures, output
