"""Multi-query associative recall for every attention layout; same as `zebra experiment recall`.

    OMP_NUM_THREADS=1 nohup nice -n 15 python experiments/recall.py > runs/recall.log 2>&1 &   # CPU grid, resumes
    python experiments/recall.py --config experiments/configs/recall_gpu.yaml --out docs/results/recall_gpu

One thread per process unless OMP_NUM_THREADS says otherwise (the grid's cells are timed in CPU seconds).
"""

import os
import sys

import torch

from zebra_llm.cli import main

if __name__ == "__main__":
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    main(["experiment", "recall", *sys.argv[1:]])
