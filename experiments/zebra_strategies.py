"""The Zebra paper's strategy comparison at small scale; same as `zebra experiment zebra_strategies`.

    python experiments/zebra_strategies.py                       # the CPU grid (resumes, ~3 h quiet)
    python experiments/zebra_strategies.py --config experiments/configs/zebra_strategies_gpu.yaml \\
        --out docs/results/zebra_strategies_gpu                  # the paper's lengths on a GPU
"""

import sys

from zebra_llm.cli import main

if __name__ == "__main__":
    main(["experiment", "zebra_strategies", *sys.argv[1:]])
