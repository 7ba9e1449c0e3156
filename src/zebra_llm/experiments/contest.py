"""The extension contest: every training-free context-extension method at its documented defaults, on the
same models, lengths and prompts (perplexity by length, passkey, RULER tasks), one resumable command.

    PYTHONPATH=$PWD/src python benchmarks/contest_model.py --steps 170      # the small model (~12 min)
    zebra experiment contest                                                # the small model's grid
    zebra experiment contest --model smollm2 --tasks passkey \\
        --multiples 1 --passkey-trials 2 --methods none dca self_extend     # SmolLM2 at 8k (slow on CPU)
    zebra experiment contest --model smollm2 --multiples 2 4                # 16k/32k: later
    zebra experiment contest --model smollm2 --trained-length 2048 \\
        --multiples 2 4 --passkey-trials 6 --ruler-trials 30 --threads 1   # simulated c' = 2048: 4k and 8k
    zebra experiment contest --report-only --write-docs                     # tables, README

``python benchmarks/extensions_contest.py`` takes the same options (a wrapper of this command).

A **cell** is (model, task, method, length). Each finished cell is written atomically to
``<out-dir>/cells/<model>/<task>/<method>@<length>.json`` (its items and its summary row) and is never
computed again: rerunning the command skips it, so a stopped run resumes where it was, and a larger
``--trials`` later only adds new cells of other tasks/lengths (delete a cell file to recompute it).
``contest.json`` (a flat ``rows`` list), ``contest.md`` (tables) and one heatmap per (model, task) are
regenerated from the cell files after every cell and by ``--report-only``.

Methods (labels of the tables), at length N on a model trained at c tokens, f = N / c:

* ``none``; ``linear`` / ``dynamic`` / ``yarn``: transformers' rope scaling with ``factor=f`` (the
  factor that maps N onto c, how these methods are documented to be used);
* ``dca`` (the paper's, no temperature), ``dca:temperature=true``, ``dca:preset=chunkllama``;
* ``yarn+dca``: ``dca:pretraining_length=2c`` on a ``yarn:factor=2`` model, the stacking of
  ``zebra experiment dca_quality`` (the paper stacks DCA on PI/NTK-scaled models);
* ``self_extend``, ``rerope``, ``string`` (and ``sinks`` once ``zebra_llm.extensions`` has it): their
  library defaults for a model trained at c.

**Simulated trained length** (``--trained-length C``): every method set up as if the model had been
trained at c' = C (rope factors N / c' over an original context of c', DCA's ``pretraining_length`` c',
the chunkllama geometry of c', ``apply_extension(..., trained_length=c')`` for the piecewise methods) and
evaluated at multiples of c' that stay inside the model's real context, where ``none`` is the model at
its own positions: the ceiling, shown and not ranked. Cells of model ``<name>-c<C>``. It measures what a
method's position folding costs against the model's own positions, not true extrapolation
(docs/extensions.md, "The simulated trained length").

Every spec is given ``max_length=N``: that only lifts the evaluation guard of ``zebra_llm.eval.methods``
(4x a method's nominal context), it changes no computation; rows past a method's nominal context are
flagged ``past_nominal``. Nothing was tuned on these texts.

Statistics: perplexity is exp of the token-weighted mean NLL over n held-out documents, with a 95%
interval from a t-interval over the documents' mean NLLs (exponentiated); accuracies (passkey, and the
RULER tasks whose score is 0/1) get Wilson 95% intervals; RULER's fractional scores (multi-value tasks)
use Wilson on the summed score as an approximation. Each row is tested against the best ranked method
of its (model, task, length) on the shared prompts (``zebra_llm.eval.stats``: exact McNemar, a sign test
for fractional scores, a paired t-test of per-document NLL for perplexity; Holm over the ranked methods),
and :func:`.contest_decide.recommendation` turns the cells into the README's and docs' sentences by
the rule :data:`.contest_report.RULE`.

Held-out text: perplexity runs on standard-library modules that are NOT in the training corpus
(``zebra_llm.data.sources.STDLIB_MODULES``), copied to ``runs/contest-heldout/``.

This module runs the grid; :mod:`.contest_plan` holds its methods, plans and cell rows,
:mod:`.contest_decide` the paired tests and the rule, :mod:`.contest_report` the tables, figures and pages.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from .contest_decide import load_cells
from .contest_plan import (
    METHODS, OUT_DIR, PASSKEY_DEPTHS, ROOT, SMALL_MODEL, TASKS, Plan, _trained, accuracy_row, cell_path,
    method_plan, model_name, past_nominal, ppl_row, simulated_config,
)
from .contest_report import DOCS, README, docs_text, fill_docs, fill_readme, readme_text, report

HELDOUT_DIR = ROOT / "runs" / "contest-heldout"
# Long stdlib modules outside the training corpus (sources.STDLIB_MODULES), longest first.
HELDOUT_MODULES = (
    "doctest.py", "argparse.py", "subprocess.py", "mailbox.py", "pathlib.py", "difflib.py", "ast.py",
    "configparser.py", "threading.py", "dataclasses.py", "shutil.py", "statistics.py", "enum.py",
    "ftplib.py", "imaplib.py", "textwrap.py", "tempfile.py", "zipfile/__init__.py", "pickle.py", "fractions.py",
)


def heldout_dir(where: Path, tokenizer, min_tokens: int, max_docs: int) -> Path:
    """The held-out documents long enough for ``min_tokens``, copied under runs/ (first ``max_docs``)."""
    from zebra_llm.data.sources import STDLIB_MODULES, stdlib_dir

    root = stdlib_dir()
    target = where / f"min{min_tokens}"
    if target.is_dir() and len(list(target.iterdir())) >= max_docs:
        return target
    target.mkdir(parents=True, exist_ok=True)
    count = 0
    for name in HELDOUT_MODULES:
        assert name not in STDLIB_MODULES
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if len(tokenizer(text)["input_ids"]) < min_tokens + 1:
            continue
        shutil.copyfile(path, target / name.replace("/", "_"))
        count += 1
        if count >= max_docs:
            break
    if count == 0:
        raise ValueError(f"no held-out stdlib module has {min_tokens} tokens")
    return target

# ------------------------------------------------------------------ running a cell


def _load_objects(model: str, plan: Plan, dtype: str = "float32", device: str | None = None):
    """``{spec: (model, tokenizer)}`` with the plan's extension and base applied, or None (spec alone)."""
    if plan.base is None and plan.extension is None:
        return None
    from zebra_llm.eval import MethodSpec
    from zebra_llm.extensions import apply_extension
    from zebra_llm.loading import load_model

    m, tok = load_model(model, dtype=dtype, device=device)
    if plan.extension is not None:
        method, trained = plan.extension
        apply_extension(m, method, **({} if trained is None else {"trained_length": trained}))
    if plan.base is not None:
        m = MethodSpec.parse(plan.base).apply(m)
    return {str(MethodSpec.parse(plan.spec)): (m, tok)}


def run_cell(args, model: str, config, tokenizer, task: str, label: str, length: int,
             simulated: int | None = None) -> dict:
    """Compute one cell; returns {"row": ..., "items": [...]}."""
    from zebra_llm.eval import MethodSpec

    trained = _trained(config)
    plan = method_plan(label, length, trained, simulated)
    spec = str(MethodSpec.parse(plan.spec))
    run = {"dtype": args.dtype, "device": args.device}  # the configs' own loading for the plain model
    objects = _load_objects(model, plan, **run)
    started = time.perf_counter()
    if task == "ppl":
        from zebra_llm.eval import PerplexityConfig, run_perplexity

        data = heldout_dir(args.heldout_dir, tokenizer, max(args.ppl_min_tokens or 0, length), args.ppl_docs)
        cfg = PerplexityConfig(model=model, methods=[spec], data=str(data), mode="fixed", lengths=[length],
                               max_docs=args.ppl_docs, same_docs=True, **run)
        result = run_perplexity(cfg, None, progress=False, model_objects=objects)
        items = [i for i in result["items"] if i["method"] == spec]
        row = ppl_row(items)
    elif task == "passkey":
        from zebra_llm.eval.passkey import run_passkey
        from zebra_llm.eval.retrieval import RetrievalConfig

        cfg = RetrievalConfig(model=model, methods=[spec], lengths=[length], depths=list(args.passkey_depths),
                              trials=args.passkey_trials, seed=0, batch_size=args.batch_size, **run)
        result = run_passkey(cfg, None, progress=False, model_objects=objects)
        items = [i for i in result["items"] if i["method"] == spec]
        row = accuracy_row([float(bool(i["correct"])) for i in items], "accuracy")
    else:
        from zebra_llm.eval.ruler import RulerConfig, run_ruler

        cfg = RulerConfig(model=model, methods=[spec], tasks=[task], lengths=[length], trials=args.ruler_trials,
                          seed=0, **run)
        result = run_ruler(cfg, None, progress=False, model_objects=objects)
        items = [i for i in result["items"] if i["method"] == spec]
        row = accuracy_row([float(i["score"]) for i in items], "score")
    row.update(model=model_name(model, simulated, args.dtype), task=task, method=label, spec=spec, base=plan.base, length=length)
    if simulated is None:
        row.update(multiple=length / trained, trained_context=trained,
                   past_nominal=past_nominal(label, length, config))
    else:
        sim = simulated_config(config, simulated)
        ceiling = label == "none"
        row.update(multiple=length / simulated, trained_context=simulated, protocol="simulated",
                   model_trained_context=trained, applied=plan.describe(), ceiling=ceiling,
                   past_nominal=False if ceiling else past_nominal(label, length, sim))
    if plan.extension is not None and simulated is None:
        row["applied"] = plan.describe()
    if args.dtype != "float32" or args.device not in (None, "cpu"):
        row.update(dtype=args.dtype, device=args.device or "cpu")
    row["seconds"] = round(time.perf_counter() - started, 2)
    return {"row": row, "items": items}


def run_grid(args) -> int:
    """Every missing cell, in the order of ``--tasks`` then ``--multiples`` then ``--methods`` (so the first
    task at the first length is finished for every method before the next), then the report. Returns the
    number of cells computed."""
    from zebra_llm.io import write_json_atomic
    from zebra_llm.loading import load_config
    from zebra_llm.train.models import load_tokenizer

    if args.device is not None and args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this torch has no CUDA device; use --device cpu")
    config = load_config(args.model)
    tokenizer = load_tokenizer(args.model)
    simulated = args.trained_length
    trained = _trained(config) if simulated is None else simulated
    lengths = [int(m * trained) for m in args.multiples]
    if simulated is not None and max(lengths) > _trained(config):
        raise ValueError(f"--multiples: the simulated protocol evaluates inside the model's real context "
                         f"({_trained(config)} tokens), got {max(lengths)} (= {max(args.multiples):g} x {simulated})")
    # every length on the same documents: those long enough for the longest length of this run
    args.ppl_min_tokens = args.ppl_min_tokens or max(lengths)
    computed = 0
    for task in args.tasks:
        for length in lengths:
            for label in args.methods:
                path = cell_path(args.out_dir, args.model, task, label, length, simulated, args.dtype)
                if path.is_file():
                    continue
                print(f"[contest] {model_name(args.model, simulated, args.dtype)} {task} {label} @ {length}", file=sys.stderr,
                      flush=True)
                cell = run_cell(args, args.model, config, tokenizer, task, label, length, simulated)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, cell)
                computed += 1
                if not args.no_report:
                    report(args.out_dir, figures=False)
        if computed and not args.no_report and not args.no_figures:
            report(args.out_dir, figures=True)
    return computed


# ------------------------------------------------------------------ command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="zebra experiment contest", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=SMALL_MODEL, help="model spec (a directory, smollm2, ...)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--multiples", nargs="+", type=float, default=[2, 4, 8],
                   help="lengths as multiples of the trained context")
    p.add_argument("--ppl-docs", type=int, default=8)
    p.add_argument("--ppl-min-tokens", type=int, default=None,
                   help="use only documents of at least this many tokens (default: the longest length)")
    p.add_argument("--heldout-dir", type=Path, default=HELDOUT_DIR, help="where the held-out texts are copied")
    p.add_argument("--passkey-trials", type=int, default=4, help="trials per depth")
    p.add_argument("--passkey-depths", nargs="+", type=float, default=list(PASSKEY_DEPTHS))
    p.add_argument("--ruler-trials", type=int, default=10)
    p.add_argument("--trained-length", type=int, default=None, metavar="C",
                   help="simulated trained length c': every method set up as if the model were trained at C, "
                        "--multiples of C (inside the model's real context); none = the real model (ceiling)")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR)
    p.add_argument("--report-only", action="store_true", help="only regenerate tables and figures from the JSON")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--write-docs", action="store_true", help="also fill the README's generated block")
    p.add_argument("--no-report", action="store_true", help="do not regenerate the report after every cell")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 for a background job)")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weights' dtype; other than float32, the cells go to their own model folder (-<dtype>)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="passkey prompts of one length decoded together (a GPU run); the other tasks run one by one")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if not args.report_only:
        n = run_grid(args)
        print(f"[contest] computed {n} cells", file=sys.stderr)
    data = report(args.out_dir, figures=not args.no_figures)
    if args.write_docs:
        from zebra_llm.io import write_text_atomic

        rows, scores = load_cells(args.out_dir)
        write_text_atomic(README, fill_readme(README.read_text(encoding="utf-8"), readme_text(rows, None, scores)))
        write_text_atomic(DOCS, fill_docs(DOCS.read_text(encoding="utf-8"), docs_text(rows, scores)))
    print(f"[contest] {len(data['rows'])} rows -> {args.out_dir / 'contest.json'}", file=sys.stderr)
    return 0
