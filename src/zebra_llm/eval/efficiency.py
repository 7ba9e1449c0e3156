"""Efficiency per method and length: FLOPs, prefill time, decode speed, peak
memory and KV-cache bytes, with ratios to the unmodified model measured in the
same run.

For each (method, length) the model prefills ``length`` tokens (batch
``batch_size``) into a fresh ``DynamicCache``, computing logits for the last
position only, then decodes ``decode_tokens`` tokens greedily one at a time.

* prefill time: median over ``repeats`` prefills (after a short warm-up);
* decode tokens/s: ``batch_size * decode_tokens`` over the decode loop's time;
* peak memory: above what was in use before the case, over the prefill and
  the decode. On CUDA ``max_memory_allocated``; on CPU the resident set size,
  sampled every millisecond by a thread. With ``isolate`` (the CLI's default)
  each case runs in a fresh process, so memory one case freed cannot hide
  the next case's peak;
* KV-cache bytes: every tensor held by the cache after the prefill;
* FLOPs: the library's analytical estimate for a forward of ``length`` tokens
  (``zebra_llm.flops``), from the model's config.

The unmodified model (``none``) is always measured, first, as the baseline of
the ratios; it is exempt from its length limit here because cost is
measurable at any length even where its output is not useful.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from dataclasses import field as dc_field

import torch

from ..hf import CACHE_KWARG, output_cache
from .loaded import load_for_run
from .method_spec import MethodSpec, check_plan, parse_methods
from .progress import progress_bar
from .results import ResultsFile, model_fingerprint, produced_by


@dataclass
class BenchConfig:
    model: str = "smollm2"
    methods: list[str] = dc_field(default_factory=lambda: ["none"])
    lengths: list[int] = dc_field(default_factory=lambda: [4096])
    decode_tokens: int = 16
    repeats: int = 1
    batch_size: int = 1
    isolate: bool = True
    dtype: str = "float32"
    device: str | None = None

    def __post_init__(self):
        specs = parse_methods(self.methods)
        # the baseline of every ratio, measured first
        specs = [s for s in specs if str(s) != "none"]
        self.methods = ["none"] + [str(s) for s in specs]
        if not self.lengths:
            raise ValueError("lengths: give at least one length")
        for n in self.lengths:
            if n < 1:
                raise ValueError(f"lengths must be >= 1, got {n}")
        for name in ("decode_tokens", "repeats", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def identity(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in ("methods", "lengths")}


# ----------------------------------------------------------------- FLOPs


def estimate_flops(config, seq_len: int, *, batch_size: int = 1) -> int | None:
    """The library's FLOPs estimate (``zebra_llm.flops``) for a forward of ``batch_size`` sequences of
    ``seq_len`` tokens, or None for a model family it does not cover. The one place ``zebra bench``
    asks for FLOPs.

    DCA does not change the count: its three partial attentions together score exactly the causal
    (query, key) pairs of full attention, and the rope-scaling methods change no matmul.
    """
    from zebra_llm.flops import forward_flops

    try:
        return int(forward_flops(config, seq_len, batch_size=batch_size))
    except ValueError:
        return None


# ----------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory above the starting point while the block runs (bytes; None if unmeasurable)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = _rss_bytes()
        self._max = self._base or 0
        self._stop, self._sampling = threading.Event(), threading.Event()
        if self._base is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
            self._sampling.wait(1.0)  # the block starts once the sampler runs (a busy machine delays it)
        return self

    def _sample(self):
        self._sampling.set()
        while not self._stop.wait(0.001):
            rss = _rss_bytes()
            if rss is not None and rss > self._max:
                self._max = rss

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return False
        if self._base is None:
            return False
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()
        self._max = max(self._max, rss or 0)
        self.peak = self._max - self._base
        return False


def cache_bytes(cache) -> int:
    """Bytes of every tensor a KV cache holds (all layers, keys and values)."""
    seen, total = set(), 0

    def visit(obj, depth=0):
        nonlocal total
        if isinstance(obj, torch.Tensor):
            if obj.data_ptr() not in seen and obj.numel():
                seen.add(obj.data_ptr())
                total += obj.numel() * obj.element_size()
        elif depth < 3 and isinstance(obj, (list, tuple)):
            for x in obj:
                visit(x, depth + 1)
        elif depth < 3 and isinstance(obj, dict):
            for x in obj.values():
                visit(x, depth + 1)

    for layer in getattr(cache, "layers", []) or []:
        for value in vars(layer).values():
            visit(value)
    return total


# ----------------------------------------------------------------- one case


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure(model, length: int, *, decode_tokens: int, repeats: int = 1, batch_size: int = 1, seed: int = 0) -> dict:
    """Prefill time, decode tokens/s, peak memory and KV-cache bytes of ``model`` at ``length``."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    vocab = model.get_output_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch_size, length), generator=gen).to(device)  # [B, T]

    def prefill():
        cache = DynamicCache(config=model.config)
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{CACHE_KWARG: cache})
        kept = output_cache(out)
        return out.logits[:, -1], kept if kept is not None else cache

    # warm-up on a short input: first-call overheads, not the length's cost
    model(input_ids=ids[:, : min(length, 16)], use_cache=False, logits_to_keep=1)
    _sync(device)
    times = []
    with PeakMemory(device) as mem:
        for _ in range(repeats):
            t0 = time.perf_counter()
            logits, cache = prefill()
            _sync(device)
            times.append(time.perf_counter() - t0)
        kv = cache_bytes(cache)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            nxt = logits.argmax(-1, keepdim=True)  # [B, 1] greedy
            out = model(input_ids=nxt, use_cache=True, **{CACHE_KWARG: cache})
            logits = out.logits[:, -1]
        _sync(device)
        decode_s = time.perf_counter() - t0
    return {
        "prefill_s": statistics.median(times),
        "prefill_tokens_per_s": batch_size * length / statistics.median(times),
        "decode_s": decode_s,
        "decode_tokens_per_s": batch_size * decode_tokens / decode_s,
        "peak_bytes": mem.peak,
        "kv_cache_bytes": kv,
        "kv_cache_bytes_after_decode": cache_bytes(cache),
    }


def _case(config: BenchConfig, method: str, length: int) -> dict:
    torch.manual_seed(0)
    spec = MethodSpec.parse(method)
    loaded = load_for_run(config, spec)
    if method != "none":
        loaded.check_length(length)
    result = measure(loaded.model, length, decode_tokens=config.decode_tokens, repeats=config.repeats,
                     batch_size=config.batch_size)
    result["flops"] = estimate_flops(loaded.model.config, length, batch_size=config.batch_size)
    result["model"] = {"source": loaded.source, "method": spec.to_dict(), **loaded.info}
    return result


def _child(config_dict: dict, method: str, length: int, queue) -> None:
    try:
        queue.put(("ok", _case(BenchConfig(**config_dict), method, length)))
    except Exception as e:  # reported to the parent, which raises it
        queue.put(("error", f"{type(e).__name__}: {e}"))


def _isolated_case(config: BenchConfig, method: str, length: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(asdict(config), method, length, queue))
    proc.start()
    try:
        status, payload = queue.get()
    finally:
        proc.join()
    if status != "ok":
        if payload.startswith("ValueError: "):
            raise ValueError(payload[len("ValueError: "):])
        raise RuntimeError(f"bench case {method} at {length} failed: {payload}")
    return payload


# ----------------------------------------------------------------- the run


_RATIO_FIELDS = {
    "prefill_s": "prefill_time_ratio",
    "decode_tokens_per_s": "decode_speed_ratio",
    "peak_bytes": "peak_memory_ratio",
    "kv_cache_bytes": "kv_cache_ratio",
    "flops": "flops_ratio",
}


def summarize_bench(items: list[dict]) -> list[dict]:
    base = {i["length"]: i for i in items if i["method"] == "none"}
    rows = []
    for item in items:
        row = {k: item.get(k) for k in ("method", "length", "prefill_s", "decode_tokens_per_s", "peak_bytes",
                                         "kv_cache_bytes", "flops")}
        ref = base.get(item["length"])
        for key, name in _RATIO_FIELDS.items():
            a, b = item.get(key), (ref or {}).get(key)
            row[name] = a / b if a is not None and b else None
        rows.append(row)
    return rows


def run_bench(config: BenchConfig, output=None, *, resume: bool = True, progress: bool = True) -> dict:
    results = ResultsFile(output, kind="bench", config=asdict(config), identity=config.identity(),
                          key_fields=("method", "length"), resume=resume)
    # Fail fast on a length a method does not support, before any measurement.
    # the specs as they run (a saved method's settings in the label, issue 25.2)
    methods = [str(m) for m in check_plan(config.model, config.methods, config.lengths, exempt=("none",))]
    # what produced each item (issue 25.1): the model's files and the method as it runs (with the version)
    made = {m: produced_by(model=model_fingerprint(config.model), method=m) for m in methods}
    cases = [(m, n) for n in config.lengths for m in methods if results.reuse(made[m], method=m, length=n) is None]
    bar = progress_bar(total=len(cases), desc="bench", enable=progress)
    for method, length in cases:
        bar.set_postfix_str(f"{method} @ {length}")
        result = _isolated_case(config, method, length) if config.isolate else _case(config, method, length)
        model_info = result.pop("model")
        if method not in results.data["models"]:
            results.set_model(method, model_info)
        results.add({"method": method, "length": length, **result, "produced_by": made[method]})
        gc.collect()
        bar.update(1)
    bar.close()
    keep = {(m, n) for m in methods for n in config.lengths}
    return results.finish("bench", [r for r in summarize_bench(results.items) if (r["method"], r["length"]) in keep])
