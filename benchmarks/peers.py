"""Our attention kernels beside the peers a user could reach for, in one run.

    python benchmarks/peers.py                                  # 4k / 16k / 64k, writes the JSON and the page
    python benchmarks/peers.py --seq 4096 --repeats 1 --json /tmp/p.json --no-page
    python benchmarks/peers.py --report                         # rewrite docs/performance.md from the JSON

Variants (float32 by default, batch 1, 8 heads, head_dim 64, window 512):

  causal_sdpa         ``F.scaled_dot_product_attention(is_causal=True)``: the baseline of every ratio
  local               ``zebra_llm.attention.local_attention`` (the ``sdpa`` backend: blocked band)
  global_approx       ``global_approx_attention`` (same window, chunk 512)
  global              ``global_attention``
  flex_sliding        ``torch.compile(flex_attention)`` with a sliding-window ``BlockMask``
  sdpa_dense_sliding  SDPA with a dense ``[seq, seq]`` sliding mask (what a stock transformers model does);
                      skipped above ``--dense-max`` (its mask alone is ``seq^2`` bytes, scores 4x that)

Every (length, pass) runs in a child process; inside it the variants are timed round-robin (one warm-up
round, which also compiles FlexAttention, then ``--repeats`` rounds, median kept), so load from other jobs
hits every variant alike. Memory: for ``fwd`` the rise of the resident set's high-water mark during one
call (Linux ``clear_refs``; CUDA ``max_memory_allocated``); for ``fwd+bwd`` the bytes of the distinct tensors
autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``, exact), plus the peak.
Scaling exponents are least-squares slopes of log(time) and log(memory) against log(seq).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "docs" / "results" / "performance" / "peers.json"
PAGE = ROOT / "docs" / "performance.md"
VARIANTS = ("causal_sdpa", "local", "global_approx", "global", "flex_sliding", "sdpa_dense_sliding")


# --- measurement helpers (also used by zebra_model.py) ------------------------------------------------


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM (Linux >= 4.0)
        f.write("5")
    return status_bytes("VmRSS")


def peak(device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return status_bytes("VmHWM")


class SavedBytes:
    """Bytes of the distinct tensor storages autograd saves for backward inside the ``with`` block."""

    def __init__(self):
        self.storages: dict[int, int] = {}

    def _pack(self, t):
        import torch

        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            self.storages[st.data_ptr()] = max(self.storages.get(st.data_ptr(), 0), st.nbytes())
        return t

    def __enter__(self):
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


def fit_exponent(xs, ys) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def replace_section(page: Path, name: str, body: str) -> None:
    """Rewrite the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``page``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = page.read_text() if page.exists() else ""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    from zebra_llm.io import write_text_atomic

    write_text_atomic(page, text)


# --- one (length, pass) in a child process -----------------------------------------------------------


def _fns(q, k, v, a):
    import torch
    import torch.nn.functional as F

    from zebra_llm import attention as A

    w, c, n = a["window"], a["chunk_size"], q.shape[2]
    fns = {
        "causal_sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "local": lambda: A.local_attention(q, k, v, window=w, backend="sdpa"),
        "global_approx": lambda: A.global_approx_attention(q, k, v, window=w, chunk_size=c, backend="sdpa"),
        "global": lambda: A.global_attention(q, k, v, backend="sdpa"),
    }
    if "flex_sliding" in a["variants"]:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        def sliding(b, h, qi, ki):
            return (ki <= qi) & (ki > qi - w)

        bm = torch.compile(create_block_mask)(sliding, None, None, n, n, device=q.device)
        flex = torch.compile(flex_attention)
        fns["flex_sliding"] = lambda: flex(q, k, v, block_mask=bm)
    if "sdpa_dense_sliding" in a["variants"] and n <= a["dense_max"]:
        i = torch.arange(n, device=q.device)
        dense = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - w)
        fns["sdpa_dense_sliding"] = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    return {name: fn for name, fn in fns.items() if name in a["variants"]}


def _case(seq, mode, a, out_q):
    import torch

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    device = torch.device(a["device"])
    dtype = getattr(torch, a["dtype"])
    torch.manual_seed(0)
    grad = mode == "fwd+bwd"
    q, k, v = (torch.randn(1, a["heads"], seq, a["head_dim"], device=device, dtype=dtype, requires_grad=grad)
               for _ in range(3))
    grad_out = torch.randn(1, a["heads"], seq, a["head_dim"], device=device, dtype=dtype)
    results, runs = {}, {}
    fns = _fns(q, k, v, a)
    for name, fn in fns.items():

        def run(fn=fn):
            out = fn()
            if grad:
                out.backward(grad_out)
                q.grad = k.grad = v.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        try:  # warm-up (compiles FlexAttention) and the memory measurement
            base = reset_peak(device)
            t0 = time.perf_counter()
            if grad:
                with SavedBytes() as saved:
                    out = fn()
                out.backward(grad_out)
                q.grad = k.grad = v.grad = None
                del out
            else:
                with torch.no_grad():
                    run()
            first = time.perf_counter() - t0
            results[name] = {"peak_bytes": peak(device) - base, "first_s": first, "times": []}
            if grad:
                results[name]["saved_bytes"] = saved.total
            runs[name] = run
        except Exception as e:  # a peer that cannot do this pass here (e.g. no CPU backward): recorded
            results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    for _ in range(a["repeats"]):
        for name, run in runs.items():
            t0 = time.perf_counter()
            if grad:
                run()
            else:
                with torch.no_grad():
                    run()
            results[name]["times"].append(time.perf_counter() - t0)
    for r in results.values():
        if "times" in r:
            r["seconds"] = statistics.median(r["times"])
    if "local" in runs and "flex_sliding" in runs and not grad:  # the peers must agree before they are timed
        with torch.no_grad():
            results["flex_sliding"]["max_abs_diff_to_local"] = float((fns["local"]() - fns["flex_sliding"]()).abs().max())
    out_q.put(results)


def _profile_case(seq, a, out_q):
    """Where ``local_attention``'s time goes: self CPU time per aten op (``torch.profiler``) over two
    calls after a warm-up, forward and forward + backward."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from zebra_llm import attention as A

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    torch.manual_seed(0)
    dtype = getattr(torch, a["dtype"])
    out = {}
    for mode in ("fwd", "fwd+bwd"):
        grad = mode == "fwd+bwd"
        q, k, v = (torch.randn(1, a["heads"], seq, a["head_dim"], dtype=dtype, requires_grad=grad) for _ in range(3))

        def run():
            with torch.set_grad_enabled(grad):
                o = A.local_attention(q, k, v, window=a["window"], backend="sdpa")
                if grad:
                    o.sum().backward()

        run()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run()
            run()
        ops = sorted(((e.key, e.self_cpu_time_total) for e in prof.key_averages()), key=lambda x: -x[1])
        total = sum(t for _, t in ops)
        out[mode] = [{"op": name, "share": t / total, "self_ms_per_call": t / 2e3} for name, t in ops[:6]]
    out_q.put(out)


def _child(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:-1]} failed with exit code {p.exitcode}")
    return result


# --- report ---------------------------------------------------------------------------------------


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def report(data: dict) -> str:
    a = data["args"]
    lines = [
        f"Command: `{data['command']}`  ",
        f"Device: {data['device']}; torch {data['torch']}; {a['dtype']}, batch 1, {a['heads']} heads, "
        f"head_dim {a['head_dim']}, window {a['window']}, chunk {a['chunk_size']}; median of {a['repeats']} "
        f"round(s) after a warm-up; {data['date']}.",
        "",
        "| seq | pass | variant | time (s) | time / causal SDPA | memory (MiB) | memory / causal SDPA |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in data["rows"]:
        mem_key = "saved_bytes" if row["mode"] == "fwd+bwd" else "peak_bytes"
        base = row["results"].get("causal_sdpa", {})
        for name in a["variants"]:
            r = row["results"].get(name)
            if r is None:
                lines.append(f"| {row['seq']} | {row['mode']} | {name} | not run | | | |")
                continue
            if "error" in r:
                lines.append(f"| {row['seq']} | {row['mode']} | {name} | fails: {r['error']} | | | |")
                continue
            t_ratio = r["seconds"] / base["seconds"] if base.get("seconds") else None
            m, bm = r.get(mem_key), base.get(mem_key)
            m_ratio = m / bm if m is not None and bm else None
            lines.append(
                f"| {row['seq']} | {row['mode']} | {name} | {r['seconds']:.3f} | {_fmt(t_ratio, '.3f')} | "
                f"{_fmt(None if m is None else m / 2**20, '.1f')} | {_fmt(m_ratio, '.2f')} |"
            )
    lines += ["", "Memory: `fwd` rows give the peak rise of the resident set during one call; `fwd+bwd` rows the "
              "bytes of the distinct tensors saved for backward.", "",
              "Fitted scaling exponents (slope of log time / log memory against log seq):", "",
              "| pass | variant | seqs | time exponent | memory exponent |", "|---|---|---|---:|---:|"]
    for e in data["exponents"]:
        lines.append(f"| {e['mode']} | {e['variant']} | {', '.join(map(str, e['seqs']))} | "
                     f"{_fmt(e['time'], '.2f')} | {_fmt(e['memory'], '.2f')} |")
    lines += _pair_cost_lines(data)
    if data.get("profile"):
        prof = data["profile"]
        lines += ["", f"Where `local`'s time goes at {prof['seq']} (self CPU time per op, `torch.profiler`, two calls):",
                  "", "| pass | op | share | ms per call |", "|---|---|---:|---:|"]
        for mode, ops in prof["ops"].items():
            for o in ops:
                lines.append(f"| {mode} | `{o['op']}` | {o['share']:.1%} | {o['self_ms_per_call']:.1f} |")
    lines += ["", "Targets (issue 13):", ""] + [f"- {t}" for t in targets(data)]
    return "\n".join(lines)


def _pair_cost_lines(data: dict) -> list[str]:
    """Time per attended (query, key) pair relative to causal SDPA's, per (seq, pass): how far a kernel is
    from doing its fewer pairs at the baseline's speed (1.00 would meet the FLOPs-proportional ideal)."""
    from zebra_llm.flops import LayerAttention, attended_pairs

    a = data["args"]
    layers = {"local": LayerAttention("local", a["window"]),
              "global_approx": LayerAttention("global_approx", a["window"], a["chunk_size"]),
              "flex_sliding": LayerAttention("local", a["window"]),
              "causal_sdpa": LayerAttention("global")}
    out = []
    for row in data["rows"]:
        base = row["results"].get("causal_sdpa", {}).get("seconds")
        if not base:
            continue
        per_pair = base / attended_pairs(layers["causal_sdpa"], row["seq"])
        cells = []
        for name in ("local", "global_approx", "flex_sliding"):
            r = row["results"].get(name, {})
            if "seconds" in r:
                ratio = r["seconds"] / attended_pairs(layers[name], row["seq"]) / per_pair
                cells.append(f"`{name}` {ratio:.2f}")
        if cells:
            out.append(f"| {row['seq']} | {row['mode']} | " + ", ".join(cells) + " |")
    if not out:
        return []
    return ["", "Time per attended (query, key) pair relative to causal SDPA's (1.00: as fast per pair as the "
            "baseline; the ideal time ratio is the pair ratio, 0.0625 for local at 16k):", "",
            "| seq | pass | per-pair cost vs causal SDPA |", "|---:|---|---|"] + out


def targets(data: dict) -> list[str]:
    out = []

    def sec(seq, mode, name):
        for row in data["rows"]:
            if row["seq"] == seq and row["mode"] == mode:
                return row["results"].get(name, {}).get("seconds")
        return None

    def verdict(ok):
        return "met" if ok else "missed"

    for mode, bound in (("fwd", 0.07), ("fwd+bwd", 0.10)):
        t, base = sec(16384, mode, "local"), sec(16384, mode, "causal_sdpa")
        if t and base:
            out.append(f"local {mode} at 16384: {t / base:.3f}x causal SDPA, target <= {bound}: {verdict(t / base <= bound)}")
    for row in data["rows"]:
        if row["mode"] == "fwd" and "seconds" in row["results"].get("flex_sliding", {}):
            t, f = row["results"]["local"]["seconds"], row["results"]["flex_sliding"]["seconds"]
            out.append(f"local fwd at {row['seq']}: {t / f:.2f}x compiled FlexAttention's time, target < 1: {verdict(t < f)}")
    for mode in ("fwd", "fwd+bwd"):
        t, loc = sec(16384, mode, "global_approx"), sec(16384, mode, "local")
        if t and loc:
            out.append(f"global_approx {mode} at 16384: {t / loc:.2f}x local, target <= 1.3: {verdict(t / loc <= 1.3)}")
    return out


def _exponents(rows, variants):
    out = []
    for mode in sorted({r["mode"] for r in rows}):
        for name in variants:
            pts = [(r["seq"], r["results"][name]) for r in rows if r["mode"] == mode and "seconds" in r["results"].get(name, {})]
            if len(pts) < 2:
                continue
            mem_key = "saved_bytes" if mode == "fwd+bwd" else "peak_bytes"
            out.append({
                "mode": mode, "variant": name, "seqs": [s for s, _ in pts],
                "time": fit_exponent([s for s, _ in pts], [r["seconds"] for _, r in pts]),
                "memory": fit_exponent([s for s, _ in pts], [r.get(mem_key) for _, r in pts]),
            })
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--bwd-max", type=int, default=16384, help="longest seq for fwd+bwd (time on 2 cores)")
    ap.add_argument("--dense-max", type=int, default=16384, help="longest seq for the dense-mask SDPA peer")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--chunk-size", type=int, default=512)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--profile-seq", type=int, default=16384,
                    help="profile local attention (self time per op) at this length; 0: no profile")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    ap.add_argument("--no-page", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--report", action="store_true", help="only rewrite the page from --json")
    a = ap.parse_args(argv)
    if a.report:
        data = json.loads(Path(a.json).read_text())
        replace_section(PAGE, "peers", report(data))
        print(report(data))
        return data
    args = {k: getattr(a, k) for k in ("heads", "head_dim", "window", "chunk_size", "dtype", "device", "repeats",
                                        "threads", "variants", "dense_max")}
    rows = []
    for seq in a.seq:
        for mode in a.modes:
            if mode == "fwd+bwd" and seq > a.bwd_max:
                continue
            res = _child(_case, seq, mode, args)
            rows.append({"seq": seq, "mode": mode, "results": res})
            base = res.get("causal_sdpa", {}).get("seconds")
            for name, r in res.items():
                desc = r.get("error") or (f"{r['seconds']:8.3f} s" + (f"  x{r['seconds'] / base:.3f}" if base else ""))
                print(f"seq {seq:>6} {mode:<8} {name:<19} {desc}", file=sys.stderr, flush=True)
    profile = None
    if a.profile_seq:
        profile = {"seq": a.profile_seq, "ops": _child(_profile_case, a.profile_seq, args)}
    import torch

    data = {
        "command": "python benchmarks/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_name(a.device), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": args, "rows": rows, "exponents": _exponents(rows, a.variants), "profile": profile,
    }
    from zebra_llm.io import write_json_atomic

    write_json_atomic(a.json, data)
    if not a.no_page:
        replace_section(PAGE, "peers", report(data))
    print(report(data))
    return data


if __name__ == "__main__":
    main()
