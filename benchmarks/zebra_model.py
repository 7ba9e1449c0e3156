"""A Zebra model against the same weights with all-global attention, in one run.

    python benchmarks/zebra_model.py                       # the table in docs/benchmarks.md
    python benchmarks/zebra_model.py --seq 4096 --repeats 1

For each sequence length and pass (forward; forward + backward of the LM loss)
the script times ``ZebraForCausalLM`` (``attention="group"``, ``L`` and
``window`` from the preset, 4 and 512 for ``cpu-20m``) and the same weights
with every layer global (the same tensors), float32, batch 1. Times come from
one child process per (length, pass) that runs the two models alternately, a
``--warmup`` round each and then ``--repeats`` rounds, and keeps each model's fastest
round, so that load from other jobs on a shared machine hits both alike. Peak
memory comes from a fresh child process per model and case, so it is that
pass's own (on CPU: the rise of the resident set's high-water mark, reset
after the model and inputs are built; on CUDA: ``max_memory_allocated`` above
the allocated bytes). Finally each model prefills ``--kv-seq`` tokens into its
``DynamicCache`` and the bytes the cache holds are counted.

Next to every measured time ratio it prints the ratio that
``zebra_llm.flops.estimate`` predicts, and checks issue 13's targets: the
measured time ratio within 10% of the FLOPs ratio, training tokens/s at least
2x the global model's, the bytes of the distinct tensors saved for backward
(counted with ``torch.autograd.graph.saved_tensors_hooks``: exact, where CPU
resident-set peaks vary from run to run) at most the global model's at each
``--saved-seq``, and the KV cache of the Zebra model at most ``1/L +
window/seq`` of the global model's. Scaling exponents are least-squares slopes
of log(time) against log(seq) over ``--seq``.

Results go to ``docs/results/performance/zebra_model.json`` and the section
between the ``zebra_model`` markers of ``docs/performance.md`` (``--report``
rewrites that section from the JSON alone).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import PAGE, SavedBytes, device_name, fit_exponent, replace_section  # noqa: E402

DEFAULT_JSON = Path(__file__).resolve().parents[1] / "docs" / "results" / "performance" / "zebra_model.json"


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's resident-set high-water mark (Linux >= 4.0) and return the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_bytes("VmRSS")


def _peak_rss() -> int:
    return _status_bytes("VmHWM")


def _configs(args):
    from zebra_llm import ZebraConfig

    zebra = ZebraConfig.from_preset(args["preset"], attention="group", **args["overrides"])
    dense = ZebraConfig.from_preset(args["preset"], attention="global", **args["overrides"])
    return zebra, dense


def _build(args, device):
    """The Zebra model and the all-global model, sharing one set of weights."""
    import torch

    from zebra_llm import ZebraForCausalLM

    zebra_cfg, dense_cfg = _configs(args)
    torch.manual_seed(0)
    dtype = getattr(torch, args["dtype"])
    zebra = ZebraForCausalLM(zebra_cfg).to(device=device, dtype=dtype)
    with torch.device("meta"):
        dense = ZebraForCausalLM(dense_cfg)
    dense.load_state_dict(zebra.state_dict(), assign=True)  # the very same tensors, every layer global
    dense.lm_head.weight = dense.model.embed_tokens.weight
    dense.model.rotary_emb = zebra.model.rotary_emb
    return {"zebra": zebra, "global": dense}


def _runner(model, ids, mode, device):
    import torch

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if mode == "fwd":
        model.eval()

        def run():
            with torch.no_grad():
                model(ids, use_cache=False)
            sync()
    else:
        model.train()

        def run():
            model(ids, labels=ids, use_cache=False).loss.backward()
            model.zero_grad(set_to_none=True)
            sync()

    return run


def _inputs(seq, vocab, device):
    import torch

    return torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(1)).to(device)


def _setup(args):
    import torch

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    return device, _build(args, device)


def _memory_case(variant, seq, mode, args, out_q):
    """One pass of one model in a fresh process: its peak memory above the weights and inputs."""
    import torch

    device, models = _setup(args)
    model = models[variant]
    del models
    ids = _inputs(seq, model.config.vocab_size, device)
    if mode == "saved":  # bytes of the distinct tensors autograd keeps for the backward of the LM loss
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        with SavedBytes() as saved:
            loss = model(ids, labels=ids, use_cache=False).loss
        del loss
        out_q.put({"saved_bytes": sum(b for ptr, b in saved.storages.items() if ptr not in params)})
        return
    if mode == "kv":
        model.eval()
        with torch.no_grad():
            from zebra_llm.hf import output_cache

            cache = output_cache(model(ids, use_cache=True, logits_to_keep=1))
        held = [layer.keys.shape[-2] for layer in cache.layers]
        nbytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        out_q.put({"kv_bytes": nbytes, "held": held})
        return
    run = _runner(model, ids, mode, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _reset_peak_rss()
    run()
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_rss()) - base
    out_q.put({"peak_bytes": peak})


def _timing_case(seq, mode, args, out_q):
    """Both models in one process, timed alternately (``warmup`` rounds, then ``repeats`` rounds), so load
    changes on a shared machine hit both alike; the fastest round of each is reported."""
    device, models = _setup(args)
    ids = _inputs(seq, models["zebra"].config.vocab_size, device)
    runs = {name: _runner(model, ids, mode, device) for name, model in models.items()}
    for _ in range(args["warmup"]):
        for run in runs.values():
            run()
    times = {name: [] for name in runs}
    for _ in range(args["repeats"]):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    out_q.put({name: {"best": min(t), "median": statistics.median(t), "all": t} for name, t in times.items()})


def _breakdown_case(seq, args, out_q):
    """Where a forward's time goes: per model, the wall time inside each part (the attention block of
    global and of local layers, the MLPs, the LM head; the rest is embedding and norms), from forward
    hooks, after one untimed warm-up forward; the best of ``repeats`` rounds, models alternating."""
    import torch

    device, models = _setup(args)
    ids = _inputs(seq, models["zebra"].config.vocab_size, device)
    out = {}
    for name, model in models.items():
        model.eval()
        kinds = list(getattr(model.config, "attention_types", None) or ["global"] * model.config.num_hidden_layers)
        spent: dict[str, float] = {}
        handles = []

        def timed(module, part, spent=spent):  # bound now: the loop rebinds ``spent`` for the next model
            def pre(*_):
                module._t0 = time.perf_counter()

            def post(*_):
                spent[part] = spent.get(part, 0.0) + time.perf_counter() - module._t0

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))

        for kind, layer in zip(kinds, model.model.layers):
            timed(layer.self_attn, f"attention ({kind})")
            timed(layer.mlp, "mlp")
        timed(model.lm_head, "lm_head")
        out[name] = {"handles": handles, "spent": spent, "model": model}
    best = {}
    for r in range(args["repeats"] + 1):
        for name, entry in out.items():
            entry["spent"].clear()
            t0 = time.perf_counter()
            with torch.no_grad():
                entry["model"](ids, use_cache=False)
            total = time.perf_counter() - t0
            if r == 0:
                continue  # warm-up
            parts = dict(entry["spent"], total=total)
            if name not in best or total < best[name]["total"]:
                best[name] = parts
    for entry in out.values():
        for h in entry["handles"]:
            h.remove()
    out_q.put(best)


def breakdown_rows(seq, measured, zebra_cfg, dense_cfg) -> list[dict]:
    """Per model and part: seconds, the part's FLOPs (``zebra_llm.flops``) and the rate it ran at."""
    from zebra_llm import flops

    rows = []
    for name, cfg in (("zebra", zebra_cfg), ("global", dense_cfg)):
        est = flops.estimate(cfg, seq)
        layers = flops.layer_attention(cfg)
        part_flops = {"mlp": est.mlp, "lm_head": est.lm_head}
        for kind in sorted({layer.kind for layer in layers}):
            mine = [layer for layer in layers if layer.kind == kind]
            part_flops[f"attention ({kind})"] = (est.projections * len(mine) // len(layers)
                                                 + sum(flops.attention_flops(cfg, x, seq) for x in mine))
        spent = measured[name]
        other = spent["total"] - sum(v for k, v in spent.items() if k != "total")
        for part in [*part_flops, "other", "total"]:
            seconds = other if part == "other" else spent.get(part, 0.0)
            f = est.forward if part == "total" else part_flops.get(part)
            rows.append({"seq": seq, "model": name, "part": part, "seconds": seconds, "flops": f,
                         "gflops_per_s": f / seconds / 1e9 if f and seconds > 0 else None})
    return rows


def _child(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    result = q.get()  # before join: a large result would otherwise block the child's exit
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{target.__name__}{args[:-1]} failed with exit code {p.exitcode}")
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-20m")
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--kv-seq", type=int, default=16384, help="prefill length for the KV cache measurement")
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"])
    ap.add_argument("--window", type=int, default=None, help="override the preset's window")
    ap.add_argument("--layer-group-size", type=int, default=None, help="override the preset's L")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="timed rounds per model")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per model before them")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--saved-seq", type=int, nargs="*", default=[8192, 16384],
                    help="lengths at which the bytes saved for backward are counted")
    ap.add_argument("--breakdown-seq", type=int, nargs="*", default=[16384],
                    help="lengths at which a forward's time is split by part (attention, MLP, LM head)")
    ap.add_argument("--json", default=str(DEFAULT_JSON), help="write the results to this JSON file")
    ap.add_argument("--no-page", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--no-peak", action="store_true",
                    help="skip the resident-set peaks (two more child processes per case; the saved-bytes count is exact)")
    ap.add_argument("--report", action="store_true", help="only rewrite the page from --json")
    a = ap.parse_args(argv)
    if a.report:
        result = json.loads(Path(a.json).read_text())
        replace_section(PAGE, "zebra_model", report(result))
        print(report(result))
        return result
    overrides = {}
    if a.window is not None:
        overrides["window"] = a.window
    if a.layer_group_size is not None:
        overrides["layer_group_size"] = a.layer_group_size
    args = {"preset": a.preset, "overrides": overrides, "dtype": a.dtype, "device": a.device,
            "repeats": a.repeats, "warmup": a.warmup, "threads": a.threads}

    import torch

    from zebra_llm import flops

    zebra_cfg, dense_cfg = _configs(args)
    group, window = zebra_cfg.layer_group_size, zebra_cfg.window
    n_params = _param_count(zebra_cfg)

    rows = []
    for seq in a.seq:
        flops_ratio = flops.forward_flops(zebra_cfg, seq) / flops.forward_flops(dense_cfg, seq)
        for mode in a.modes:
            timing = _child(_timing_case, seq, mode, args)
            zebra_peak = dense_peak = None
            if not a.no_peak:
                zebra_peak = _child(_memory_case, "zebra", seq, mode, args)["peak_bytes"]
                dense_peak = _child(_memory_case, "global", seq, mode, args)["peak_bytes"]
            zebra, dense = timing["zebra"], timing["global"]
            time_ratio = zebra["best"] / dense["best"]
            row = {
                "seq": seq,
                "mode": mode,
                "zebra_s": zebra["best"],
                "global_s": dense["best"],
                "zebra_times": zebra["all"],
                "global_times": dense["all"],
                "time_ratio": time_ratio,
                "flops_ratio": flops_ratio,
                "time_vs_flops": time_ratio / flops_ratio - 1,
                "zebra_peak": zebra_peak,
                "global_peak": dense_peak,
                "mem_ratio": zebra_peak / dense_peak if dense_peak else None,
                "tokens_per_s_ratio": dense["best"] / zebra["best"],
            }
            rows.append(row)
            print(
                f"seq {seq:>6} {mode:<8} zebra {row['zebra_s']:8.3f} s  global {row['global_s']:8.3f} s  "
                f"time x{time_ratio:.3f}  flops x{flops_ratio:.3f}",
                file=sys.stderr,
                flush=True,
            )

    saved = []
    for seq in a.saved_seq:
        z = _child(_memory_case, "zebra", seq, "saved", args)["saved_bytes"]
        g = _child(_memory_case, "global", seq, "saved", args)["saved_bytes"]
        saved.append({"seq": seq, "zebra_bytes": z, "global_bytes": g, "ratio": z / g})
        print(f"seq {seq:>6} saved for backward: zebra {z / 2**20:.0f} MiB, global {g / 2**20:.0f} MiB, x{z / g:.3f}",
              file=sys.stderr, flush=True)
    kv_dense = _child(_memory_case, "global", a.kv_seq, "kv", args)
    kv_zebra = _child(_memory_case, "zebra", a.kv_seq, "kv", args)
    kv = {
        "seq": a.kv_seq,
        "zebra_bytes": kv_zebra["kv_bytes"],
        "global_bytes": kv_dense["kv_bytes"],
        "ratio": kv_zebra["kv_bytes"] / kv_dense["kv_bytes"],
        "bound": 1 / group + window / a.kv_seq,
        "zebra_held": kv_zebra["held"],
    }

    breakdown = []
    for seq in a.breakdown_seq:
        breakdown += breakdown_rows(seq, _child(_breakdown_case, seq, args), zebra_cfg, dense_cfg)
        print(f"seq {seq:>6} forward split by part: done", file=sys.stderr, flush=True)

    exponents = []
    for mode in a.modes:
        pts = [r for r in rows if r["mode"] == mode]
        for name in ("zebra", "global"):
            exponents.append({"mode": mode, "model": name, "seqs": [r["seq"] for r in pts],
                              "time": fit_exponent([r["seq"] for r in pts], [r[f"{name}_s"] for r in pts])})
    result = {
        "command": "python benchmarks/zebra_model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_name(a.device), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": {"preset": a.preset, "parameters": n_params, "layers": zebra_cfg.num_hidden_layers,
                  "hidden": zebra_cfg.hidden_size, "heads": zebra_cfg.num_attention_heads,
                  "kv_heads": zebra_cfg.num_key_value_heads, "group": group, "window": window},
        "args": vars(a), "parameters": n_params, "rows": rows, "saved": saved, "kv": kv, "exponents": exponents,
        "breakdown": breakdown,
    }
    from zebra_llm.io import write_json_atomic

    write_json_atomic(a.json, result)
    print()
    print(report(result))
    if not a.no_page:
        replace_section(PAGE, "zebra_model", report(result))
    return result


def _targets(result) -> list[str]:
    out = []
    for r in result["rows"]:
        ok = abs(r["time_vs_flops"]) <= 0.10
        out.append(f"seq {r['seq']} {r['mode']}: time ratio {r['time_ratio']:.3f} vs FLOPs ratio "
                   f"{r['flops_ratio']:.3f} ({r['time_vs_flops']:+.0%}): {'met' if ok else 'missed'} (within 10%)")
        if r["mode"] == "fwd+bwd" and r["seq"] >= 16384:  # the target is at 16k
            ok = r["tokens_per_s_ratio"] >= 2.0
            out.append(f"seq {r['seq']} training tokens/s {r['tokens_per_s_ratio']:.3f}x global: "
                       f"{'met' if ok else 'missed'} (>= 2.0x)")
    for s in result["saved"]:
        out.append(f"seq {s['seq']} saved for backward {s['ratio']:.3f}x global: {'met' if s['ratio'] <= 1.0 else 'missed'} "
                   "(<= 1.0x)")
    kv = result["kv"]
    out.append(f"KV cache ratio {kv['ratio']:.4f} <= {kv['bound']:.4f}: {'met' if kv['ratio'] <= kv['bound'] else 'missed'}")
    return out


def _mib(x) -> str:
    return "-" if x is None else f"{x / 2**20:.0f}"


def report(result) -> str:
    m = result["model"]
    lines = [
        f"Command: `{result['command']}`  ",
        f"Device: {result['device']}; torch {result['torch']}; {result['args']['dtype']}, batch 1; preset "
        f"{m['preset']} ({m['parameters'] / 1e6:.1f}M parameters, {m['layers']} layers, hidden {m['hidden']}, "
        f"{m['heads']}/{m['kv_heads']} heads); Zebra: group L={m['group']}, window {m['window']}; baseline: the same "
        f"weights, every layer global; best of {result['args']['repeats']} round(s) after {result['args']['warmup']} "
        f"warm-up; {result['date']}.",
        "",
        "| seq | pass | Zebra (s) | global (s) | time ratio | FLOPs ratio | time / FLOPs | tokens/s vs global | "
        "Zebra peak (MiB) | global peak (MiB) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['seq']} | {r['mode']} | {r['zebra_s']:.2f} | {r['global_s']:.2f} | {r['time_ratio']:.3f} | "
            f"{r['flops_ratio']:.3f} | {r['time_ratio'] / r['flops_ratio']:.2f} | {r['tokens_per_s_ratio']:.2f}x | "
            f"{_mib(r['zebra_peak'])} | {_mib(r['global_peak'])} |"
        )
    lines += ["", "Bytes of the distinct tensors saved for the backward of the LM loss (parameters excluded):", "",
              "| seq | Zebra (MiB) | global (MiB) | ratio |", "|---:|---:|---:|---:|"]
    for s in result["saved"]:
        lines.append(f"| {s['seq']} | {s['zebra_bytes'] / 2**20:.0f} | {s['global_bytes'] / 2**20:.0f} | {s['ratio']:.3f} |")
    kv = result["kv"]
    lines += ["", f"KV cache after a {kv['seq']}-token prefill: Zebra {kv['zebra_bytes'] / 2**20:.1f} MiB, global "
              f"{kv['global_bytes'] / 2**20:.1f} MiB, ratio {kv['ratio']:.4f} (bound 1/L + window/seq = {kv['bound']:.4f}).",
              "", "Time scaling exponents (slope of log time against log seq):", "",
              "| pass | model | seqs | exponent |", "|---|---|---|---:|"]
    for e in result["exponents"]:
        t = "-" if e["time"] is None else f"{e['time']:.2f}"
        lines.append(f"| {e['mode']} | {e['model']} | {', '.join(map(str, e['seqs']))} | {t} |")
    if result.get("breakdown"):
        lines += ["", "Where a forward's time goes (wall time inside each part, from forward hooks; FLOPs from "
                  "`zebra_llm.flops`; attention rows include the q/k/v/o projections):", "",
                  "| seq | model | part | time (s) | share | GFLOP | GFLOP/s |", "|---:|---|---|---:|---:|---:|---:|"]
        totals = {(b["seq"], b["model"]): b["seconds"] for b in result["breakdown"] if b["part"] == "total"}
        for b in result["breakdown"]:
            share = b["seconds"] / totals[(b["seq"], b["model"])]
            gf = "-" if b["flops"] is None else f"{b['flops'] / 1e9:.0f}"
            rate = "-" if b["gflops_per_s"] is None else f"{b['gflops_per_s']:.0f}"
            lines.append(f"| {b['seq']} | {b['model']} | {b['part']} | {b['seconds']:.2f} | {share:.0%} | {gf} | {rate} |")
    lines += ["", "Targets (issue 13):", ""] + [f"- {t}" for t in _targets(result)]
    return "\n".join(lines)


def _param_count(cfg) -> int:
    import torch

    from zebra_llm import ZebraForCausalLM

    with torch.device("meta"):
        model = ZebraForCausalLM(cfg)
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    main()
