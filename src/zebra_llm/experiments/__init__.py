"""The Zebra paper's experiments at small scale (issue 9), one resumable command each.

* :mod:`.strategies`: the four attention strategies pretrained from scratch at three
  training lengths (the paper's Figures 2, 3 and 4);
* :mod:`.lcat`: long context adaptation training of SmolLM2-135M converted to Zebra;
* :mod:`.lit`: long instruction tuning on synthetic long-document QA records;
* :mod:`.recall`: multi-query associative recall trained from scratch for every attention layout;
* :mod:`.lcat_control`: LCAT at small scale from a model pretrained here, beside its all-global control;
* :mod:`.contest`: the extension contest, every training-free extension method on the same prompts;
* :mod:`.dca_quality`: Dual Chunk Attention's perplexity and passkey on SmolLM2-135M.

The first five take a typed config (``--config``, ``--set``); the last two their own options
(``zebra experiment contest --help``), the command lines of the scripts they were.

Every experiment is a grid of *cells* (one training run, one evaluation, one
timing); each finished cell is written atomically as its own JSON file and never
recomputed (:mod:`.cells`), and ``results.json`` (a flat ``rows`` list) is
rebuilt from the cells after each one. The contest keeps its own cell files
(``cells/<model>/<task>/<method>@<length>.json``, ``contest.json``); DCA's quality
resumes the items of its evaluation results files.
"""

from .cells import CellStore

EXPERIMENTS = ("zebra_strategies", "lcat_smollm2", "lit", "recall", "lcat_control")
OWN_OPTIONS = ("contest", "dca_quality")  # modules with main(argv) and their own argument parser

__all__ = ["CellStore", "EXPERIMENTS", "OWN_OPTIONS"]
