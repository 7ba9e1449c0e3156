"""Dual Chunk Attention: prefill time and memory against the unmodified model, in one run.

    PYTHONPATH=$PWD/src python benchmarks/dca_speed.py                  # the table in docs/benchmarks.md
    PYTHONPATH=$PWD/src python benchmarks/dca_speed.py --prefill 4096 --attention 8192 --decode-context 0

Three parts, every case in a fresh child process so that its peak memory is its own:

1. **Prefill** of SmolLM2-135M on the first N tokens of ``_pydecimal.py`` (``use_cache=True``,
   ``logits_to_keep=1``, as ``generate`` does): the unmodified model (transformers' SDPA) against
   DCA (``pretraining_length`` 8192, ``chunk_size`` 6144) with each of its kernels: ``sdpa`` (blocks
   merged through their log-sum-exp; the CPU default) and ``sdpa_stacked`` (the three query copies
   side by side in one SDPA call per query block).
2. **Decode** tokens/s with a KV cache after a prefill of ``--decode-context`` tokens (greedy, one
   token per step), measured in the same child as that prefill.
3. **Attention only** at SmolLM2's shapes (batch 1, 9 query / 3 key-value heads, head_dim 64):
   causal SDPA against the DCA kernels, forward (``--attention`` lengths) and forward+backward
   (``--attention-backward`` lengths).

Peak memory is the peak resident set size above what the child held before the measured call
(model and inputs loaded, a short warm-up done); on CUDA ``max_memory_allocated`` above the
allocation before the call. The children run with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``: by
default glibc raises that threshold after large frees and then keeps freed blocks in its heap, so
the resident set depended on the order of allocations rather than on the live tensors (measured:
an 8k SmolLM2 prefill peaked 0.4 GiB higher with DCA's block-sized temporaries by default, and
the same as the unmodified model with the fixed threshold). Times are the median of ``--repeats`` runs (the first run is the
peak-memory run). Ratios are to the unmodified model / causal SDPA of the same length, same run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time

VARIANTS = {
    "unmodified": None,  # the model as loaded: transformers' SDPA
    "dca (sdpa)": "sdpa",
    "dca (sdpa_stacked)": "sdpa_stacked",
}


def _peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _start_peak(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _peak_bytes(device)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats):
    """(peak extra bytes of the first call, median seconds over ``repeats`` calls, last result)."""
    base = _start_peak(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    times = [time.perf_counter() - t0]
    peak = _peak_bytes(device) - base
    for _ in range(repeats - 1):
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return peak, statistics.median(times), result


def _model_case(variant, seq, args, out_q):
    import torch

    from zebra_llm import apply_dca
    from zebra_llm.attention import set_backend
    from zebra_llm.hf import cache_kwargs, output_cache
    from zebra_llm.data.sources import stdlib_dir
    from zebra_llm.eval.corpus import load_token_docs
    from zebra_llm.loading import load_model

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    model, tokenizer = load_model("smollm2", dtype=args["dtype"], device=device)
    backend = VARIANTS[variant]
    if backend is not None:
        apply_dca(model, pretraining_length=args["pretraining_length"], chunk_size=args["chunk_size"])
        set_backend(backend)
    ids = load_token_docs(tokenizer, str(stdlib_dir() / "_pydecimal.py")).ids[0][:seq][None].to(device)
    if ids.shape[1] < seq:
        raise ValueError(f"_pydecimal.py has only {ids.shape[1]} tokens, fewer than {seq}")

    @torch.no_grad()
    def prefill(n=seq):
        return model(input_ids=ids[:, :n], use_cache=True, logits_to_keep=1)

    prefill(256)  # warm-up: one-time allocations and kernel set-up, not the measured length
    peak, seconds, out = _timed(prefill, device, args["repeats"])
    row = {"part": "prefill", "variant": variant, "seq": seq, "seconds": seconds, "peak_bytes": peak}
    if seq == args["decode_context"] and args["decode_tokens"]:
        cache, token = output_cache(out), out.logits[:, -1:].argmax(-1)
        steps = args["decode_tokens"]
        with torch.no_grad():
            out = model(input_ids=token, use_cache=True, **cache_kwargs(cache))  # first step: warm-up
            token = out.logits[:, -1:].argmax(-1)
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                out = model(input_ids=token, use_cache=True, **cache_kwargs(cache))
                token = out.logits[:, -1:].argmax(-1)
            _sync(device)
        row["decode_tokens_per_s"] = steps / (time.perf_counter() - t0)
    out_q.put(row)


def _attention_case(variant, seq, backward, args, out_q):
    import torch
    import torch.nn.functional as F

    from zebra_llm.attention import dca_attention

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    device = torch.device(args["device"])
    dtype = getattr(torch, args["dtype"])
    hq, hkv, d = 9, 3, 64  # SmolLM2-135M
    q = torch.randn(1, hq, seq, d, device=device, dtype=dtype, requires_grad=backward)
    k = torch.randn(1, hkv, seq, d, device=device, dtype=dtype, requires_grad=backward)
    v = torch.randn(1, hkv, seq, d, device=device, dtype=dtype, requires_grad=backward)
    inv_freq = 1.0 / (100000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    backend = VARIANTS[variant]

    def call():
        if backend is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            out = dca_attention(
                q, k, v, inv_freq=inv_freq, chunk_size=args["chunk_size"],
                pretraining_length=args["pretraining_length"], backend=backend,
            )
        if backward:
            out.sum().backward()
        return None

    with torch.set_grad_enabled(backward):
        dca_warm = 2 * args["pretraining_length"] if backend is not None else 256
        if backend is not None:  # warm-up on a short input that still spans all three relations
            dca_attention(q[:, :, :dca_warm].detach(), k[:, :, :dca_warm].detach(), v[:, :, :dca_warm].detach(),
                          inv_freq=inv_freq, chunk_size=args["chunk_size"],
                          pretraining_length=args["pretraining_length"], backend=backend)
        peak, seconds, _ = _timed(call, device, args["repeats"])
    label = "unmodified" if backend is None else variant
    out_q.put({"part": "attention fwd+bwd" if backward else "attention fwd", "variant": label.replace(
        "unmodified", "causal sdpa"), "seq": seq, "seconds": seconds, "peak_bytes": peak})


def _run(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:2]} failed with exit code {p.exitcode}")
    return q.get()


def _report(rows, base):
    """Each row's time and memory ratios to its part's baseline; ``peak_bytes`` ``None`` (a part that measures
    no memory) gives ``mem_ratio`` ``None``, a baseline without a positive peak ``nan``."""
    for r in rows:
        b = base[(r["part"], r["seq"])]
        r["time_ratio"] = r["seconds"] / b["seconds"]
        if r["peak_bytes"] is None or b["peak_bytes"] is None:
            r["mem_ratio"] = None
        else:
            r["mem_ratio"] = r["peak_bytes"] / b["peak_bytes"] if b["peak_bytes"] > 0 else float("nan")


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prefill", type=int, nargs="*", default=[8192, 16384], help="model prefill lengths")
    ap.add_argument("--decode-context", type=int, default=16384, help="measure decoding after this prefill (0: no)")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--attention", type=int, nargs="*", default=[32768], help="attention-only forward lengths")
    ap.add_argument("--attention-backward", type=int, nargs="*", default=[8192],
                    help="attention-only forward+backward lengths")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--pretraining-length", type=int, default=8192)
    ap.add_argument("--chunk-size", type=int, default=6144)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # inherited by the spawned children
    if "unmodified" not in a.variants:
        a.variants = ["unmodified", *a.variants]
    args = {k: getattr(a, k) for k in (
        "device", "dtype", "repeats", "threads", "pretraining_length", "chunk_size", "decode_context", "decode_tokens")}
    if a.decode_context and a.decode_context not in a.prefill:
        a.prefill = [*a.prefill, a.decode_context]

    rows, base = [], {}

    def record(r):
        if r["variant"] in ("unmodified", "causal sdpa"):
            base[(r["part"], r["seq"])] = r
        rows.append(r)
        extra = f"  decode {r['decode_tokens_per_s']:.2f} tok/s" if "decode_tokens_per_s" in r else ""
        print(f"{r['part']:<18} seq {r['seq']:>6} {r['variant']:<20} {r['seconds']:9.3f} s  "
              f"peak {r['peak_bytes'] / 2**20:9.1f} MiB{extra}", file=sys.stderr, flush=True)

    for seq in a.prefill:
        for variant in a.variants:
            record(_run(_model_case, variant, seq, args))
    for backward, lengths in ((False, a.attention), (True, a.attention_backward)):
        for seq in lengths:
            for variant in a.variants:
                record(_run(_attention_case, variant, seq, backward, args))
    _report(rows, base)

    import torch

    device = a.device if a.device != "cuda" else torch.cuda.get_device_name()
    print(
        f"\nDevice: {device} ({platform.processor() or platform.machine()}, "
        f"{a.threads or torch.get_num_threads()} threads), torch {torch.__version__}, {a.dtype}, "
        f"SmolLM2-135M, DCA pretraining_length {a.pretraining_length}, chunk_size {a.chunk_size}, "
        f"{a.repeats} timed run(s) per case\n"
    )
    print("| part | seq | variant | time (s) | time ratio | peak extra memory (MiB) | memory ratio | decode tok/s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        decode = f"{r['decode_tokens_per_s']:.2f}" if "decode_tokens_per_s" in r else ""
        print(
            f"| {r['part']} | {r['seq']} | {r['variant']} | {r['seconds']:.2f} | {r['time_ratio']:.3f} | "
            f"{r['peak_bytes'] / 2**20:.1f} | {r['mem_ratio']:.3f} | {decode} |"
        )
    if a.json:
        from zebra_llm.io import write_json_atomic

        write_json_atomic(a.json, {"args": vars(a), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
