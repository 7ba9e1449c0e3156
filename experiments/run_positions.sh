#!/bin/bash
# Run, or resume, the seeded per-position strategy grid (issue 19.2) and LCAT with its control (19.3) on CPU,
# in priority order: the grid's global seed-0 cell (LCAT's pretrained model), then LCAT with its control,
# then the rest of the grid; then regenerate docs/results.md. Finished cells are never recomputed; a run
# stopped halfway resumes from its last checkpoint under runs/ (gitignored).
#
#   nohup experiments/run_positions.sh > runs/positions.log 2>&1 &
#
# Until a global cell passes the window-cut check (experiments/probe_window_cut.py --model DIR: its loss
# must rise when its attention is cut to the window), the grid's other cells measure training noise, not
# attention (docs/results.md, "Loss by position, with seeds"); ONLY=1 stops after LCAT with its control.
#
# Environment: PYTHON (default .venv/bin/python), NICE (default 15), OMP_NUM_THREADS (default 1).
set -u
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1 PYTHONPATH="${PYTHONPATH:-$PWD/src}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
PY="${PYTHON:-$PWD/.venv/bin/python}"
mkdir -p runs
run() {  # experiment config out runs [only...]
  nice -n "${NICE:-15}" "$PY" -c 'import sys
from zebra_llm.experiments.runner import run_experiment
name, config, out, runs, *only = sys.argv[1:]
text, _ = run_experiment(name, config=config, out=out, runs_dir=runs, only=only or None)
print(text)' "$@" || echo "$1 stopped with status $?"
}
GRID=(zebra_strategies experiments/configs/zebra_positions_cpu.yaml docs/results/zebra_positions runs/zebra_positions)
run "${GRID[@]}" train_1024_global_seed0
run lcat_control experiments/configs/lcat_control_cpu.yaml docs/results/lcat_control runs/lcat_control
[ "${ONLY:-0}" = 1 ] || run "${GRID[@]}"
"$PY" experiments/write_results_md.py
