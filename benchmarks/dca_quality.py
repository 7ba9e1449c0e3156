"""DCA quality on SmolLM2-135M; same as `zebra experiment dca_quality` (zebra_llm.experiments.dca_quality),
same options.

    PYTHONPATH=$PWD/src python benchmarks/dca_quality.py                          # everything (hours on 2 CPU cores)
    PYTHONPATH=$PWD/src python benchmarks/dca_quality.py --report-only --write-docs  # tables into the docs
"""

import sys

from zebra_llm.cli import main

if __name__ == "__main__":
    main(["experiment", "dca_quality", *sys.argv[1:]])
