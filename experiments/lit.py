"""Long instruction tuning on synthetic long-document QA; same as `zebra experiment lit`."""

import sys

from zebra_llm.cli import main

if __name__ == "__main__":
    main(["experiment", "lit", *sys.argv[1:]])
