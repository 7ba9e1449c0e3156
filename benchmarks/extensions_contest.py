"""The extension contest; same as `zebra experiment contest` (zebra_llm.experiments.contest), same options.

    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py                        # the small model's grid
    PYTHONPATH=$PWD/src python benchmarks/extensions_contest.py --report-only --write-docs  # tables, README
"""

import sys

from zebra_llm.cli import main

if __name__ == "__main__":
    main(["experiment", "contest", *sys.argv[1:]])
