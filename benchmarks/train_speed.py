"""Training throughput of a Zebra model against the same model all-global, in one run.

    flock /tmp/zebra-cpu.lock python benchmarks/train_speed.py          # the table in docs/benchmarks.md
    python benchmarks/train_speed.py --seq 4096 --steps 3 --device cpu

Each case trains a freshly initialised ``cpu-20m`` preset (8 layers, hidden
512, ~20M parameters) with ``attention="group"`` (L=4: layers 0 and 4
global, the rest a 512-token window) or ``attention="global"``, batch 1,
through the library's own training step (``zebra_llm.train.Trainer.train_step``:
forward, token loss, backward, gradient clipping, AdamW), on sequences of
random token ids (throughput does not depend on the token values). The first
step is a warm-up; the time is the median of the following ``--steps``.
Every case runs in a fresh child process, so its peak memory is its own (CPU:
peak resident set size; CUDA: ``max_memory_allocated``). On CUDA the engine's
default applies: bf16 autocast with float32 master weights.

Next to the measured speed-up the table prints the one that
``zebra_llm.flops.training_flops`` predicts (matmul FLOPs only).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import tempfile
import time

VARIANTS = {
    "zebra": {"attention": "group", "layer_group_size": 4, "window": 512},
    "global": {"attention": "global"},
}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is KiB on Linux


def _config(preset: str, variant: str):
    from zebra_llm import ZebraConfig

    return ZebraConfig.from_preset(preset, **VARIANTS[variant])


def _case(variant: str, seq: int, args: dict, out_q) -> None:
    import torch

    from zebra_llm.data.packing import pack_documents
    from zebra_llm.train.batches import Stage, StagedData
    from zebra_llm.train.config import EngineOptions, OptimOptions, RunOptions
    from zebra_llm.train.distributed import setup
    from zebra_llm.train.engine import Trainer
    from zebra_llm.train.models import build_from_config
    from zebra_llm.train.parallelize import resolve_plan

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    config = _config(args["preset"], variant)
    steps = 1 + args["steps"]
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(0, config.vocab_size, (seq,), generator=g) for _ in range(steps)]
    data = StagedData([Stage(0, pack_documents(docs, seq, mode="split", pad_id=0), seq)], batch_size=1, seed=0)
    engine = EngineOptions(device=args["device"], activation_checkpointing=args["activation_checkpointing"])
    env = setup(engine.device)
    plan = resolve_plan(engine, env)
    model = build_from_config(config).to(env.device)
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model, tokenizer=None, data=data, optim=OptimOptions(warmup_steps=1),
            run=RunOptions(steps=steps, batch_size=1, output_dir=out, progress=False),
            plan=plan, env=env, config={}, micro_batch_size=1,
        )
        cuda = env.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        base = 0 if cuda else _peak_rss_bytes()
        times, losses = [], []
        for step in range(steps):
            t0 = time.perf_counter()
            record = trainer.train_step(step)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            losses.append(record["loss"])
    peak = torch.cuda.max_memory_allocated() if cuda else _peak_rss_bytes() - base
    seconds = statistics.median(times[1:])
    out_q.put({
        "variant": variant, "seq": seq, "device": str(env.device), "precision": plan.precision,
        "step_seconds": seconds, "tokens_per_s": seq / seconds, "peak_bytes": peak, "params": params,
        "losses": losses, "times": times,
    })


def measure(variant: str, seq: int, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_case, args=(variant, seq, args, q))
    p.start()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"case {variant} seq={seq} on {args['device']} failed (exit code {p.exitcode})")
    return q.get()


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"cpu ({platform.machine()}, {threads} threads), torch {torch.__version__}"


def main(argv=None) -> int:
    import torch

    from zebra_llm.flops import training_flops

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, nargs="+", default=[4096, 16384])
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when available")
    ap.add_argument("--preset", default="cpu-20m")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--activation-checkpointing", action="store_true")
    ap.add_argument("--json", default=None, help="also write the raw results here")
    a = ap.parse_args(argv)
    devices = a.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    rows = []
    for device in devices:
        args = {"steps": a.steps, "device": device, "preset": a.preset, "threads": a.threads,
                "activation_checkpointing": a.activation_checkpointing}
        print(f"Device: {device_name(device)}", flush=True)
        for seq in a.seq:
            res = {v: measure(v, seq, args) for v in ("global", "zebra")}
            predicted = training_flops(_config(a.preset, "global"), seq) / training_flops(_config(a.preset, "zebra"), seq)
            for v in ("global", "zebra"):
                r = res[v]
                r["speedup"] = r["tokens_per_s"] / res["global"]["tokens_per_s"]
                r["flops_speedup"] = predicted if v == "zebra" else 1.0
                rows.append(r)
                print(json.dumps({k: r[k] for k in ("device", "seq", "variant", "step_seconds", "tokens_per_s", "speedup",
                                                    "flops_speedup", "peak_bytes")}), flush=True)
    params = rows[0]["params"] if rows else 0
    print()
    print(f"{a.preset} preset ({params / 1e6:.1f}M parameters), batch 1, one warm-up step then the median of "
          f"{a.steps}; Zebra = group attention, L=4, window 512")
    print()
    print("| device | precision | seq | model | step (s) | tokens/s | speed-up vs global | FLOPs-predicted speed-up | peak memory (GiB) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['device']} | {r['precision']} | {r['seq']} | {r['variant']} | {r['step_seconds']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['speedup']:.2f} | {r['flops_speedup']:.2f} | {r['peak_bytes'] / 2**30:.2f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
