"""Training-free extension methods: prefill time and peak memory against unmodified SDPA, in one run.

    PYTHONPATH=$PWD/src python benchmarks/extensions_speed.py --json docs/results/extensions/speed_cpu.json
    PYTHONPATH=$PWD/src python benchmarks/extensions_speed.py --prefill 8192 --attention 16384 --threads 1

Same method as ``benchmarks/dca_speed.py`` (whose timing, child-process and peak-memory helpers it
uses: every case in a fresh spawned child, peak resident set above what the child held before the
measured call, glibc's ``MALLOC_MMAP_THRESHOLD_=65536``):

1. **Prefill** of SmolLM2-135M (trained context 8192) on the first N tokens of ``_pydecimal.py``
   (``use_cache=True``, ``logits_to_keep=1``): unmodified (transformers' SDPA) against each method
   at its documented defaults for this model (``zebra_llm.extensions.config``): DCA (chunk 6144),
   SelfExtend (G 8, W 1024), ReRoPE (w 1024), leaky ReRoPE (w 1024, k 16), STRING (S 2703, W 128).
2. **Attention only** at SmolLM2's shapes (batch 1, 9 query / 3 key-value heads, head_dim 64):
   causal SDPA against the piecewise kernel with each method's spec, forward.

Ratios are to the unmodified model / causal SDPA of the same length in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dca_speed import _report, _run, _timed  # noqa: E402

METHODS = {
    "unmodified": None,
    "dca": ("dca", {}),
    "self_extend": ("self_extend", {}),
    "rerope": ("rerope", {}),
    "leaky_rerope": ("rerope", {"leak": 16.0}),
    "string": ("string", {}),
}
TRAINED = 8192  # SmolLM2-135M


def _spec(variant):
    from zebra_llm.extensions.config import spec_for

    method, settings = METHODS[variant]
    key = "pretraining_length" if method == "dca" else "trained_length"
    return spec_for(method, **{key: TRAINED, **settings})


def _model_case(variant, seq, args, out_q):
    import torch

    from zebra_llm import apply_extension
    from zebra_llm.data.sources import stdlib_dir
    from zebra_llm.eval.corpus import load_token_docs
    from zebra_llm.loading import load_model

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    model, tokenizer = load_model("smollm2", dtype=args["dtype"], device=device)
    if METHODS[variant] is not None:
        method, settings = METHODS[variant]
        apply_extension(model, method, **settings)
    ids = load_token_docs(tokenizer, str(stdlib_dir() / "_pydecimal.py")).ids[0][:seq][None].to(device)
    if ids.shape[1] < seq:
        raise ValueError(f"_pydecimal.py has only {ids.shape[1]} tokens, fewer than {seq}")

    @torch.no_grad()
    def prefill(n=seq):
        return model(input_ids=ids[:, :n], use_cache=True, logits_to_keep=1)

    prefill(256)  # warm-up
    peak, seconds, _ = _timed(prefill, device, args["repeats"])
    out_q.put({"part": "prefill", "variant": variant, "seq": seq, "seconds": seconds, "peak_bytes": peak})


def _attention_case(variant, seq, args, out_q):
    import torch
    import torch.nn.functional as F

    from zebra_llm.attention.piecewise import piecewise_attention

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = torch.device(args["device"])
    dtype = getattr(torch, args["dtype"])
    q = torch.randn(1, 9, seq, 64, device=device, dtype=dtype)
    k = torch.randn(1, 3, seq, 64, device=device, dtype=dtype)
    v = torch.randn(1, 3, seq, 64, device=device, dtype=dtype)
    inv_freq = 1.0 / (100000.0 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    spec = None if METHODS[variant] is None else _spec(variant)

    def call():
        if spec is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return piecewise_attention(q, k, v, spec=spec, inv_freq=inv_freq)

    with torch.no_grad():
        n = min(seq // 4, 2048)  # short: the measured call must set its own peak
        if spec is not None:  # warm-up on a shorter input
            piecewise_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], spec=spec, inv_freq=inv_freq)
        peak, seconds, _ = _timed(call, device, args["repeats"])
    out_q.put({"part": "attention fwd", "variant": "causal sdpa" if spec is None else variant, "seq": seq,
               "seconds": seconds, "peak_bytes": peak})


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, nargs="*", default=[16384], help="model prefill lengths")
    ap.add_argument("--attention", type=int, nargs="*", default=[16384], help="attention-only forward lengths")
    ap.add_argument("--variants", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    if "unmodified" not in a.variants:
        a.variants = ["unmodified", *a.variants]
    args = {k: getattr(a, k) for k in ("device", "dtype", "repeats", "threads")}
    rows, base = [], {}

    def record(r):
        if r["variant"] in ("unmodified", "causal sdpa"):
            base[(r["part"], r["seq"])] = r
        rows.append(r)
        print(f"{r['part']:<14} seq {r['seq']:>6} {r['variant']:<14} {r['seconds']:9.3f} s  "
              f"peak {r['peak_bytes'] / 2**20:9.1f} MiB", file=sys.stderr, flush=True)

    for seq in a.attention:
        for variant in a.variants:
            record(_run(_attention_case, variant, seq, args))
    for seq in a.prefill:
        for variant in a.variants:
            record(_run(_model_case, variant, seq, args))
    _report(rows, base)

    import torch

    print(f"\nDevice: {a.device} ({platform.processor() or platform.machine()}, "
          f"{a.threads or torch.get_num_threads()} threads), torch {torch.__version__}, {a.dtype}, SmolLM2-135M, "
          f"{a.repeats} timed run(s) per case\n")
    print(table(rows))
    if a.json:
        from zebra_llm.io import write_json_atomic

        write_json_atomic(a.json, {"args": vars(a), "device": a.device, "torch": torch.__version__,
                                   "threads": a.threads or torch.get_num_threads(), "rows": rows})
    return rows


def table(rows: list[dict]) -> str:
    """The Markdown table of a run's rows (also: ``python benchmarks/extensions_speed.py --table FILE``)."""
    lines = ["| part | seq | variant | time (s) | time ratio | peak extra memory (MiB) | memory ratio |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['part']} | {r['seq']} | {r['variant']} | {r['seconds']:.2f} | {r['time_ratio']:.2f} | "
                     f"{r['peak_bytes'] / 2**20:.1f} | {r['mem_ratio']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--table":
        import json

        print(table(json.loads(Path(sys.argv[2]).read_text())["rows"]))
    else:
        main()
