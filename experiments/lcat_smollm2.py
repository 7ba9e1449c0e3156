"""LCAT of SmolLM2-135M converted to Zebra; same as `zebra experiment lcat_smollm2`."""

import sys

from zebra_llm.cli import main

if __name__ == "__main__":
    main(["experiment", "lcat_smollm2", *sys.argv[1:]])
