"""Regenerate the tables of docs/results.md from docs/results/*/results.json (never typed by hand).

    python experiments/write_results_md.py [docs/results.md] [docs/results]
"""

import sys

from zebra_llm.experiments.page import write_page

if __name__ == "__main__":
    print(write_page(*sys.argv[1:3]))
