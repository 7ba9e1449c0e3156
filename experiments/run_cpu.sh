#!/bin/bash
# Run, or resume, the three experiments on CPU in priority order (strategy grid, LCAT, LIT), then redraw
# the figures and regenerate docs/results.md's tables. Finished cells are never recomputed; a training run
# stopped halfway resumes from its last checkpoint under runs/<experiment>/ (gitignored).
#
#   nohup experiments/run_cpu.sh > runs/run_cpu.log 2>&1 &
#
# Environment: PYTHON (default python), PYTHONPATH (default ./src).
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONPATH="${PYTHONPATH:-$PWD/src}"
PY="${PYTHON:-python}"
mkdir -p runs
for exp in zebra_strategies lcat_smollm2 lit; do
  nice -n 10 "$PY" -m zebra_llm experiment "$exp" || echo "experiment $exp stopped with status $?"
done
"$PY" experiments/write_results_md.py
