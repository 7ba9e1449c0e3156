"""Time and memory of each attention variant against global attention, in one run.

    python benchmarks/attention.py                      # the table in docs/benchmarks.md
    python benchmarks/attention.py --seq 4096 --repeats 3

Forward and forward+backward of ``local_attention`` and
``global_approx_attention`` against ``global_attention`` at the same length
(batch 1, 8 heads, head_dim 64, float32, window 512, chunk 512 by default).
Every (variant, length, pass) runs in a fresh child process, so its peak
memory is its own: on CPU the peak resident set size above the inputs, on CUDA
``max_memory_allocated`` above the inputs. Ratios are to global attention at
the same length, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _case(variant, seq, mode, args, out_q):
    import torch

    from zebra_llm import attention as A

    torch.manual_seed(0)
    torch.set_num_threads(args["threads"]) if args["threads"] else None
    device = torch.device(args["device"])
    dtype = getattr(torch, args["dtype"])
    h, d, w, c = args["heads"], args["head_dim"], args["window"], args["chunk_size"]
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(1, h, seq, d, device=device, dtype=dtype, requires_grad=grad) for _ in range(3))
    fns = {
        "global": lambda: A.global_attention(q, k, v),
        "local": lambda: A.local_attention(q, k, v, window=w),
        "global_approx": lambda: A.global_approx_attention(q, k, v, window=w, chunk_size=c),
    }
    fn = fns[variant]

    def run():
        out = fn()
        if grad:
            out.sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _peak_rss_bytes()
    run()  # warm-up, and the peak-memory measurement
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss_bytes()) - base
    times = []
    for _ in range(args["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out_q.put({"variant": variant, "seq": seq, "mode": mode, "seconds": statistics.median(times), "peak_bytes": peak})


def measure(variant, seq, mode, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(variant, seq, mode, args, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{variant} at seq {seq} ({mode}) failed with exit code {p.exitcode}")
    return q.get()


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 16384, 32768])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    args = {k: getattr(a, k) for k in ("heads", "head_dim", "window", "chunk_size", "dtype", "device", "repeats", "threads")}

    rows = []
    for seq in a.seq:
        for mode in a.modes:
            base = None
            for variant in ("global", "local", "global_approx"):
                r = measure(variant, seq, mode, args)
                if variant == "global":
                    base = r
                r["time_ratio"] = r["seconds"] / base["seconds"]
                r["mem_ratio"] = r["peak_bytes"] / base["peak_bytes"] if base["peak_bytes"] > 0 else float("nan")
                rows.append(r)
                print(
                    f"seq {seq:>6} {mode:<8} {variant:<14} {r['seconds']:8.3f} s  x{r['time_ratio']:.3f}  "
                    f"peak {r['peak_bytes'] / 2**20:8.1f} MiB  x{r['mem_ratio']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )

    import torch

    device = a.device if a.device != "cuda" else torch.cuda.get_device_name()
    print(
        f"\nDevice: {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}, {a.dtype}, batch 1, {a.heads} heads, head_dim {a.head_dim}, "
        f"window {a.window}, chunk_size {a.chunk_size}\n"
    )
    print("| seq | pass | variant | time (s) | time / global | peak extra memory (MiB) | memory / global |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['seq']} | {r['mode']} | {r['variant']} | {r['seconds']:.3f} | {r['time_ratio']:.3f} | "
            f"{r['peak_bytes'] / 2**20:.1f} | {r['mem_ratio']:.2f} |"
        )
    if a.json:
        from zebra_llm.io import write_json_atomic

        write_json_atomic(a.json, {"args": vars(a), "rows": rows})
    return rows


if __name__ == "__main__":
    main()
