"""Time and peak memory of global attention with padding and chunked prefill, in one run.

    python benchmarks/global_padding.py --json docs/results/global_padding/global_padding.json
    python benchmarks/global_padding.py --report-only docs/results/global_padding/global_padding.json

Cases at each length ``seq`` (batch 2, float32): ``unpadded`` (full prefill), ``left-padded`` (rows
padded by seq/8 and 3*seq/8), ``right-padded`` (one row padded by seq/4), ``chunked-prefill`` (the last
seq/4 queries against a seq-token cache), ``chunked-left-padded`` (both), ``decode-left-padded`` (one
query). Each runs with ``global_attention``'s ``sdpa`` backend and with ``dense-mask``, the formulation
it replaced: one SDPA call under an explicit ``[batch, 1, seq_q, seq_kv]`` boolean mask. Every
(case, implementation) runs in a fresh child process; peak memory is the peak resident set size
above the inputs. Memory ratios are to ``unpadded`` with ``sdpa`` at the same length, time ratios to
``dense-mask`` in the same case, all measured in the same run.
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

CASES = ("unpadded", "left-padded", "right-padded", "chunked-prefill", "chunked-left-padded", "decode-left-padded")
IMPLEMENTATIONS = ("sdpa", "dense-mask")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def _inputs(case: str, seq: int, heads: int, heads_kv: int, dim: int):
    import torch

    g = torch.Generator().manual_seed(0)
    seq_q = {"chunked-prefill": seq // 4, "chunked-left-padded": seq // 4, "decode-left-padded": 1}.get(case, seq)
    q = torch.randn(2, heads, seq_q, dim, generator=g)
    k = torch.randn(2, heads_kv, seq, dim, generator=g)
    v = torch.randn(2, heads_kv, seq, dim, generator=g)
    mask = None
    if "left-padded" in case:
        mask = torch.ones(2, seq, dtype=torch.bool)
        mask[0, : seq // 8] = False
        mask[1, : 3 * seq // 8] = False
    elif case == "right-padded":
        mask = torch.ones(2, seq, dtype=torch.bool)
        mask[1, -seq // 4 :] = False
    return q, k, v, mask


def _dense_mask(q, k, v, mask):
    """The replaced formulation: an explicit [batch, 1, seq_q, seq_kv] mask (the query keeps itself)."""
    import torch
    import torch.nn.functional as F

    seq_q, seq_kv = q.shape[2], k.shape[2]
    qi = torch.arange(seq_kv - seq_q, seq_kv)[:, None]
    kj = torch.arange(seq_kv)[None, :]
    allowed = kj <= qi
    if mask is not None:
        allowed = allowed & (mask[:, None, :] | (kj == qi))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed.unsqueeze(-3), enable_gqa=q.shape[1] != k.shape[1])


def _case(case, impl, seq, args, out_q):
    import torch

    from zebra_llm import attention as A

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    q, k, v, mask = _inputs(case, seq, args["heads"], args["heads_kv"], args["head_dim"])

    def run():
        with torch.no_grad():
            if impl == "sdpa":
                return A.global_attention(q, k, v, key_padding_mask=mask, backend="sdpa")
            return _dense_mask(q, k, v, mask)

    base = _peak_rss_bytes()
    out = run()  # warm-up, and the peak-memory measurement
    peak = _peak_rss_bytes() - base
    del out
    times = []
    for _ in range(args["repeats"]):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    out_q.put({"case": case, "impl": impl, "seq": seq, "seconds": statistics.median(times), "peak_bytes": peak})


def measure(case, impl, seq, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(case, impl, seq, args, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{case} / {impl} at seq {seq} failed with exit code {p.exitcode}")
    return q.get()


def table(result: dict) -> str:
    """The markdown table of a result file (generated, never typed)."""
    a = result["args"]
    lines = [
        f"{result['device']}, torch {result['torch']}, float32, batch 2, {a['heads']} query / {a['heads_kv']} "
        f"key-value heads, head_dim {a['head_dim']}, median of {a['repeats']}.",
        "",
        "| seq | case | implementation | time (s) | time / dense-mask | peak extra memory (MiB) | memory / unpadded sdpa |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['seq']} | {r['case']} | {r['impl']} | {r['seconds']:.3f} | {r['time_ratio']:.3f} | "
            f"{r['peak_bytes'] / 2**20:.1f} | {r['mem_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[2048, 8192])
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--heads-kv", type=int, default=1)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--report-only", metavar="JSON", help="print the table of a saved result file; compute nothing")
    a = ap.parse_args(argv)
    if a.report_only:
        with open(a.report_only, encoding="utf-8") as f:
            result = json.load(f)
        print(table(result))
        return result
    args = {k: getattr(a, k) for k in ("heads", "heads_kv", "head_dim", "repeats", "threads")}

    rows = []
    for seq in a.seq:
        base_mem = None
        for case in a.cases:
            pair = {impl: measure(case, impl, seq, args) for impl in IMPLEMENTATIONS}
            if case == "unpadded":
                base_mem = pair["sdpa"]["peak_bytes"]
            for impl, r in pair.items():
                r["time_ratio"] = r["seconds"] / pair["dense-mask"]["seconds"]
                r["mem_ratio"] = r["peak_bytes"] / base_mem if base_mem else float("nan")
                rows.append(r)
                print(
                    f"seq {seq:>6} {case:<20} {impl:<10} {r['seconds']:8.3f} s  x{r['time_ratio']:.3f}  "
                    f"peak {r['peak_bytes'] / 2**20:8.1f} MiB  x{r['mem_ratio']:.2f}",
                    file=sys.stderr,
                    flush=True,
                )

    import torch

    result = {
        "args": {**vars(a), "report_only": None},
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "rows": rows,
    }
    print(table(result))
    if a.json:
        from zebra_llm.io import write_json_atomic

        write_json_atomic(a.json, result)
    return result


if __name__ == "__main__":
    main()
