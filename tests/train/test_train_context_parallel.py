"""Context parallelism (gloo on CPU, processes spawned here): the loss and every parameter's gradient of a
tiny float64 Zebra model equal one process's on the same batch (to 1e-10 with the same kernels, to 1e-5
against the dense reference kernels, which compute in float32);
the `zebra train pretrain --context-parallel 2` command trains under torchrun like one process and resumes
bit-exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from train_helpers import losses_of

from zebra_llm.attention.context_parallel import Shard, halo_plan

pytestmark = pytest.mark.usefixtures("one_thread")

# (name, model settings, sequence length, options). n = length / N tokens per rank.
CASES = [
    ("all_global_L1", dict(attention="global"), 24, {}),
    ("group_L2", dict(attention="group", layer_group_size=2, window=4), 24, {}),
    ("group_L4", dict(attention="group", layer_group_size=4, window=5), 24, {}),
    ("halo_spans_ranks", dict(attention="group", layer_group_size=2, window=15), 24, {}),  # N=4: halo 14 > n=6
    ("window_past_sequence", dict(attention="local", window=40), 24, {}),  # every rank before is halo
    ("not_divisible", dict(attention="group", layer_group_size=2, window=4), 23, {}),  # padded to 24
    ("padding_mask", dict(attention="group", layer_group_size=2, window=6), 24, {"pad_rows": True}),
    ("dca_global_layers", dict(attention="group", layer_group_size=2, window=4), 24, {"dca": (10, 6)}),
    ("global_approx", dict(attention="global_approx", window=4, approx_chunk_size=4), 24, {}),
    # a transformers Llama (all global; LIT trains such models): its attention through the same function
    ("llama", {"llama": True}, 24, {}),
    # recomputed in backward, under the same exchange
    ("activation_checkpointing", dict(attention="group", layer_group_size=2, window=4), 24, {"checkpointing": True}),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(settings: dict, options: dict):
    from zebra_llm.modeling import ZebraConfig, ZebraForCausalLM

    torch.manual_seed(0)
    if settings.get("llama"):
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, head_dim=8)
        return LlamaForCausalLM(config).double()
    config = ZebraConfig(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, **settings)
    model = ZebraForCausalLM(config).double()
    if options.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if "dca" in options:
        from zebra_llm import apply_dca

        c, s = options["dca"]
        apply_dca(model, pretraining_length=c, chunk_size=s)
    return model


def _batch(length: int, options: dict):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 97, (2, length), generator=g)
    labels = ids.clone()
    labels[0, 3] = -100  # a token without loss
    batch = {"input_ids": ids}
    if options.get("pad_rows"):  # right padding as LIT batches have it: row 1 holds 15 real tokens
        mask = torch.ones_like(ids)
        mask[1, 15:] = 0
        labels[1, 15:] = -100
        batch["attention_mask"] = mask
    return batch, labels


def _reference(model, batch, labels, backend="auto"):
    """One process (with ``backend="reference"`` every attention through the dense reference kernels)."""
    from zebra_llm.attention import use_backend

    model.zero_grad(set_to_none=True)
    with use_backend(backend):  # backward too: activation checkpointing recomputes there
        logits = model(**batch, use_cache=False).logits  # (B, S, V) float64
        # position t predicts token t + 1
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _context_parallel(model, batch, labels, rank: int, size: int):
    from zebra_llm.train.context_parallel import ContextParallel, forward_backward

    cp = ContextParallel(None, rank, size)
    model.zero_grad(set_to_none=True)
    cp.prepare(model)
    try:
        loss = forward_backward(model, batch, labels, scale=1.0, cp=cp)
    finally:
        cp.restore(model)
    dist.all_reduce(loss)
    grads = {}
    for n, p in model.named_parameters():
        g = p.grad.clone()
        dist.all_reduce(g)  # what DDP does (its mean, undone by the engine's scale)
        grads[n] = g
    return loss, grads, dict(cp.stats)


def _train_and_resume(cfg: dict, context_parallel: int, strategy: str, out: Path) -> dict:
    """The library's pretrain under context parallelism on these processes (data parallel over the rest):
    a run that saves at step 2, then a second run resumed from that checkpoint into another directory."""
    from zebra_llm.train import pretrain

    cfg = json.loads(json.dumps(cfg))
    cfg["engine"] = {"context_parallel": context_parallel, "strategy": strategy}
    cfg["train"].update(output_dir=str(out / "cp"), save_every=2)
    full = pretrain(cfg)
    cfg["train"].update(output_dir=str(out / "resumed"), resume=str(out / "cp" / "checkpoints" / "step_00000002"))
    rest = pretrain(cfg)
    return {"losses": full.losses, "resumed": rest.losses, "resumed_from": rest.start_step}


def _cases_worker(rank: int, size: int, port: int, names: list[str], out: str, train: tuple | None) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(size))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    try:
        results = {}
        if train is not None:
            results["training"] = _train_and_resume(*train, Path(out).parent)
        for name, settings, length, options in CASES:
            if name not in names:
                continue
            model = _model(settings, options)
            batch, labels = _batch(length, options)
            loss, grads, stats = _context_parallel(model, batch, labels, rank, size)
            result = {"stats": {f"{k}/{d}": v for (k, d), v in stats.items()}}
            # the same kernels on one process (float64 throughout), and the dense reference kernels (which
            # compute in float32)
            for oracle, backend in (("one_process", "auto"), ("dense", "reference")):
                ref_loss, ref_grads = _reference(model, batch, labels, backend)
                worst = max(ref_grads, key=lambda n: (grads[n] - ref_grads[n]).abs().max().item())
                result[oracle] = {
                    "loss": loss.item(), "ref_loss": ref_loss.item(), "worst": worst,
                    "grad_diff": (grads[worst] - ref_grads[worst]).abs().max().item(),
                    "grad_scale": max(g.abs().max().item() for g in ref_grads.values()),
                }
            results[name] = result
        if rank == 0:
            Path(out).write_text(json.dumps(results))
    finally:
        dist.destroy_process_group()


def _spawn_cases(size: int, names: list[str], tmp_path: Path, train: tuple | None = None) -> dict:
    out = tmp_path / f"cases_{size}.json"
    mp.spawn(_cases_worker, args=(size, free_port(), names, str(out), train), nprocs=size)
    return json.loads(out.read_text())


def _check(results: dict, names: list[str]) -> None:
    assert sorted(set(results) - {"training"}) == sorted(names)
    for name in names:
        for oracle, tolerance in (("one_process", 1e-10), ("dense", 1e-5)):
            r = results[name][oracle]
            assert abs(r["loss"] - r["ref_loss"]) <= tolerance * abs(r["ref_loss"]), (name, oracle, r)
            assert r["grad_diff"] <= tolerance * max(1.0, r["grad_scale"]), (name, oracle, r)
            assert r["grad_scale"] > 1e-3, name  # gradients that can differ


TWO = ["all_global_L1", "group_L2", "not_divisible", "padding_mask", "dca_global_layers", "activation_checkpointing",
       "llama"]
FOUR = ["group_L2", "group_L4", "halo_spans_ranks", "window_past_sequence", "not_divisible",
        "dca_global_layers", "global_approx"]


# The debug preset (4 layers, L = 2) with window 20 on 48 tokens: with 2 ranks of 24 tokens the local
# layers exchange a halo of 19.
TRAIN = {"model": {"preset": "debug", "window": 20}, "data": {"limit": 1, "seq_len": 48},
         "optim": {"lr": 1e-2, "warmup_steps": 2}, "train": {"steps": 4, "batch_size": 2, "progress": False}}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The training run on one process."""
    from zebra_llm.train import pretrain

    cfg = json.loads(json.dumps(TRAIN))
    cfg["train"]["output_dir"] = str(tmp_path_factory.mktemp("single") / "run")
    return pretrain(cfg).losses


@pytest.mark.subprocess
def test_two_processes_equal_one_and_resume_exactly(tmp_path, single):
    results = _spawn_cases(2, TWO, tmp_path, train=(TRAIN, 2, "ddp"))
    _check(results, TWO)
    _check_training(results["training"], single)

    # the local layers' halo is window - 1 = 3 keys and values: rank 0 sends 3 tokens x 2 kv heads x 2 x 8
    # float64 numbers per local layer (2 of them) forward; the global layers all-gather
    stats = results["group_L2"]["stats"]
    assert stats["halo/forward"] == 2 * (2 * 3 * 2 * 16 * 8)  # batch 2, 3 tokens, 2 heads, k|v 16 wide, 8 bytes
    assert stats["halo/backward"] == 0  # rank 0 receives its halo's gradient, sends none back
    assert stats["all_gather/forward"] == 2 * (2 * 12 * 2 * 16 * 8)  # 2 global layers, its 12 tokens once
    # activation checkpointing recomputes each layer's forward, exchange included, in backward
    recomputed = results["activation_checkpointing"]["stats"]
    assert recomputed["all_gather/forward"] == 2 * stats["all_gather/forward"]
    assert recomputed["halo/forward"] == 2 * stats["halo/forward"]


def _check_training(training: dict, single: list[float]) -> None:
    assert training["losses"] == pytest.approx(single, rel=1e-5)  # float32: equal up to rounding
    assert training["resumed_from"] == 2
    assert training["resumed"] == training["losses"][2:]  # bit-exact


@pytest.mark.subprocess
def test_four_processes_equal_one_also_as_two_data_replicas_of_two_under_fsdp(tmp_path, single):
    results = _spawn_cases(4, FOUR, tmp_path, train=(TRAIN, 2, "fsdp"))  # training: world 4 = dp 2 x cp 2, FSDP2
    _check(results, FOUR)
    _check_training(results["training"], single)


# --------------------------------------------------------------------------- without processes


def test_halo_plan_covers_each_halo_once():
    for size in (2, 3, 4):
        for n in (1, 3, 6):
            for halo in (0, 1, 5, 6, 7, 13, 30):
                plans = [halo_plan(r, size, n, halo) for r in range(size)]
                for r, (_, receives) in enumerate(plans):
                    first = r * n - min(halo, r * n)
                    covered = []
                    for src, lo, hi in receives:
                        # the sender lists the same piece for us, of the same length, from its own slice
                        sends = {dst: (a, b) for dst, a, b in plans[src][0]}
                        a, b = sends[r]
                        assert b - a == hi - lo and src * n + a == first + lo
                        covered += range(first + lo, first + hi)
                    assert covered == list(range(first, r * n))
                for r, (sends, _) in enumerate(plans):
                    for dst, _, _ in sends:
                        assert r in [src for src, _, _ in plans[dst][1]]


def test_refusals():
    from zebra_llm.train.config import EngineOptions
    from zebra_llm.train.context_parallel import check_degree, check_model, shard_batch

    with pytest.raises(ValueError, match="multiple of the group size"):
        Shard(None, 0, 2, 7)
    with pytest.raises(ValueError, match=r"engine.context_parallel \(2\) must divide the number of processes \(3\)"):
        check_degree(2, 3)
    with pytest.raises(ValueError, match="engine.context_parallel must be an integer >= 1"):
        EngineOptions(context_parallel=0)
    with pytest.raises(ValueError, match="engine.compile"):
        EngineOptions(context_parallel=2, compile=True)
    ids = torch.zeros(1, 8, dtype=torch.long)
    packed = {"input_ids": ids, "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4]])}
    with pytest.raises(ValueError, match="data.packing split or concat"):
        shard_batch(packed, ids, lambda n: Shard(None, 0, 2, n))
    model = _model(dict(attention="global"), {})
    model.config.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(ValueError, match="RoPE type 'dynamic'"):
        check_model(model)
    from transformers import Gemma2Config, Gemma2ForCausalLM

    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    with pytest.raises(ValueError, match="model_type 'gemma2' is not supported"):
        check_model(gemma)


def test_shard_batch_pads_and_shifts_on_the_whole_row():
    from zebra_llm.train.context_parallel import shard_batch

    ids = torch.arange(7).view(1, 7)
    parts = [shard_batch({"input_ids": ids}, ids, lambda n, r=r: Shard(None, r, 2, n + 1)) for r in range(2)]
    assert [p.inputs["input_ids"].tolist() for p in parts] == [[[0, 1, 2, 3]], [[4, 5, 6, 0]]]
    assert [p.inputs["position_ids"].tolist() for p in parts] == [[[0, 1, 2, 3]], [[4, 5, 6, 7]]]
    # position 3 predicts token 4, which lives on the other rank; the pad position predicts nothing
    assert [p.targets.tolist() for p in parts] == [[[1, 2, 3, 4]], [[5, 6, -100, -100]]]


# --------------------------------------------------------------------------- the command, end to end


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    src = str(Path(__import__("zebra_llm").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "zebra_llm", "train", "pretrain", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.mark.slow  # ~30 s of CPU; the 2-process test above trains through the same library entry
@pytest.mark.subprocess
def test_torchrun_context_parallel_command_trains_like_one_process(tmp_path, single):
    """The command of docs/training.md, under torchrun."""
    _torchrun("--preset", "debug", "--window", "20", "--seq-len", "48", "--steps", "4", "--batch-size", "2",
              "--lr", "1e-2", "--warmup-steps", "2", "--set", "data.limit=1", "--no-progress",
              "--context-parallel", "2", "-o", str(tmp_path / "cp"))
    assert losses_of(tmp_path / "cp") == pytest.approx(single, rel=1e-5)


# --------------------------------------------------------------------------- the benchmark


def test_benchmark_measures_one_process_at_toy_size():
    from helpers import load_benchmark

    bench = load_benchmark("context_parallel")
    args = {"seq": 64, "lengths": [32, 64], "hidden": 32, "heads": 4, "kv_heads": 2, "layers": 4, "group": 2,
            "window": 8, "vocab": 64, "repeats": 1, "threads": 1, "device": "cpu"}
    entry = bench.run_size(1, args)
    assert [r["model"] for r in entry["runs"]] == ["zebra", "global"]
    assert all(r["activation_bytes"][0] > 0 and r["cpu_s"][0] > 0 for r in entry["runs"])
    # one process sends nothing; the bytes table has the Zebra model at both lengths
    assert [(c["model"], c["seq"]) for c in entry["comm"]] == [("zebra", 64), ("zebra", 32), ("global", 64)]
    assert all(c["bytes_per_layer"] == {"halo": 0, "all_gather": 0} for c in entry["comm"])


def test_benchmark_table_in_the_docs_matches_its_json():
    from helpers import load_benchmark

    bench = load_benchmark("context_parallel")
    data = json.loads((bench.RESULTS / "results.json").read_text())
    text = bench.PAGE.read_text(encoding="utf-8")
    assert bench.fill_page(text, bench.docs_block(data)) == text, (
        "docs/training.md: the context-parallel table differs from docs/results/context_parallel/results.json; "
        "run python benchmarks/context_parallel.py --report-only --write-docs")
    # what the table is for: halo bytes do not grow with the sequence, all-gather bytes do
    for entry in data["entries"]:
        comm = sorted((c for c in entry["comm"] if c["model"] == "zebra"), key=lambda c: c["seq"])
        if entry["size"] > 1 and len(comm) > 1:
            assert len({c["bytes_per_layer"]["halo"] for c in comm}) == 1
            gathers = [c["bytes_per_layer"]["all_gather"] for c in comm]
            assert gathers == sorted(gathers) and gathers[0] < gathers[-1]
