"""The serving engine: one thread owns the model and decodes every active request in one batch.

Scheduling (continuous batching, as far as transformers' caches allow): each loop iteration

1. drops requests whose client went away (``GenerationRequest.cancel``) and frees their rows;
2. prefills waiting requests alone (batch 1, no padding), in chunks of at most ``prefill_chunk``
   tokens per iteration in total, so a long prompt does not stall the running requests for its whole
   prefill; a request whose prefill completes samples its first token and joins the decode batch
   (its cache stacked under the others', ``batch_cache.BatchCache``);
3. runs one decode step for every request in the batch: their last tokens ``[B, 1]``, the padded
   cache, the padding mask and each row's own position.

Requests that arrive while a step runs join at the next iteration. A request's greedy tokens do not
depend on which others share its batch (left padding is exact for every method; tested in
tests/serve/test_serve_engine.py). A prompt whose prefix was prefilled before (a shared system prompt or
document) reuses that prefix's keys and values (``Snapshot``; the methods whose cached prefix is not
exact, dynamic NTK, get no prefix cache and a batch of one).
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..hf.compat import cache_kwargs, output_cache
from .batch_cache import BatchCache, Snapshot, _left_pad, has_sliding_layers

log = logging.getLogger(__name__)

TAIL = 64  # prompt tokens left (after the prefix cache) up to which requests are prefilled together


class QueueFull(RuntimeError):
    """The waiting queue holds ``max_queue`` requests already."""


class EngineStopped(RuntimeError):
    """The engine is shutting down (or has stopped) and takes no new request."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples: ``temperature == 0`` is greedy; ``seed`` makes sampling reproducible
    (each request has its own generator, so its tokens do not depend on its batch)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # vLLM's extra parameter: generate max_tokens tokens (load tests)

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}")
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop: a stop sequence must not be empty")


@dataclass
class Event:
    """What the engine reports to a request's sink: ``text`` (a piece of output) or ``done``."""

    kind: str  # "text" | "done" | "error"
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token_time: float | None = None


class GenerationRequest:
    """One request: its prompt ids, how it samples, and a sink the engine calls from its thread.

    ``sink(event)`` must return at once (the app posts into an asyncio queue).
    """

    def __init__(self, prompt_ids: list[int], params: SamplingParams, sink: Callable[[Event], None]):
        if not prompt_ids:
            raise ValueError("prompt: the prompt has no tokens")
        self.prompt_ids = list(prompt_ids)
        self.params = params
        self.sink = sink
        self.created = time.monotonic()
        self.first_token_time: float | None = None
        self._cancelled = threading.Event()
        self.generated: list[int] = []
        self.sent = 0  # characters of the output text already reported
        self.text = ""
        seed = params.seed if params.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def cancel(self) -> None:
        """The client went away: the engine frees the request's slot at its next iteration."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


@dataclass
class _Prefill:
    request: GenerationRequest
    cache: object
    done: int  # prompt tokens already in the cache


@dataclass
class EngineStats:
    waiting: int = 0
    active: int = 0
    prefilling: int = 0
    steps: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)
    tail_batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # batched prefill tails
    prefix_hits: int = 0
    prefix_tokens_reused: int = 0
    requests_done: int = 0


class Engine:
    """Owns the model in one thread and runs :class:`GenerationRequest` objects to completion.

    ``model``, ``tokenizer``: a loaded model (any method applied) and its tokenizer. ``max_batch``:
    requests decoded together; ``max_queue``: requests waiting for a slot before ``submit`` raises
    :class:`QueueFull`; ``prefill_chunk``: prompt tokens prefilled per iteration; ``prefix_cache``:
    prefilled prompts kept for reuse (0: none); ``exact_prefix``: False for methods whose cached
    prefix is not exact (dynamic NTK): no prefix cache, no chunked prefill, batch of one.
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 16, max_queue: int = 64, prefill_chunk: int = 512,
                 prefix_cache: int = 4, exact_prefix: bool = True):
        for name, value, low in (("max_batch", max_batch, 1), ("max_queue", max_queue, 0),
                                 ("prefill_chunk", prefill_chunk, 1), ("prefix_cache", prefix_cache, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.exact_prefix = exact_prefix
        self.max_batch = max_batch if exact_prefix else 1
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk if exact_prefix else 1 << 62
        self.prefix_cache = prefix_cache if exact_prefix else 0
        self.eos_ids = _eos_ids(model, tokenizer)
        # batched tails cut caches to a shorter prefix: exact without sliding-window layers only
        self._batched_tails = exact_prefix and not has_sliding_layers(self._new_cache())
        self.stats = EngineStats()
        self._waiting: collections.deque[GenerationRequest] = collections.deque()
        self._prefilling: list[_Prefill] = []
        self._rows: list[GenerationRequest] = []
        self._batch: BatchCache | None = None
        self._last_tokens: list[int] = []
        self._snapshots: collections.OrderedDict[tuple, Snapshot] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._inflight = 0  # submitted and not finished
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control (any thread)

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="zebra-serve-engine", daemon=True)
            self._thread.start()
        return self

    def submit(self, request: GenerationRequest) -> None:
        with self._cond:
            if not self._accepting or self._stop:
                raise EngineStopped("the server is shutting down")
            if self._inflight >= self.max_batch + self.max_queue:
                raise QueueFull(f"the server is full ({self.max_batch} running and {self.max_queue} waiting "
                                "requests); retry later")
            self._inflight += 1
            self._waiting.append(request)
            self.stats.waiting = len(self._waiting)
            self._cond.notify()

    def stop_accepting(self) -> None:
        with self._cond:
            self._accepting = False

    def cancel_all(self) -> None:
        """Cancel every request not finished yet (a shutdown's deadline): each gets a ``done`` event with
        finish reason ``cancelled`` at the engine's next iteration."""
        with self._cond:
            requests = list(self._waiting) + [p.request for p in self._prefilling] + list(self._rows)
            self._cond.notify()
        for r in requests:
            r.cancel()

    def idle(self) -> bool:
        with self._cond:
            return self._inflight == 0

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking requests, cancel what still runs (each gets a ``done`` event with finish reason
        ``cancelled``), and end the thread within about one step plus ``timeout``."""
        with self._cond:
            self._accepting = False
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot_stats(self) -> dict:
        with self._cond:
            s = self.stats
            return {"waiting": len(self._waiting), "prefilling": len(self._prefilling), "active": len(self._rows),
                    "steps": s.steps, "requests_done": s.requests_done, "prefix_hits": s.prefix_hits,
                    "prefix_tokens_reused": s.prefix_tokens_reused,
                    "batch_sizes": dict(sorted(s.batch_sizes.items())),
                    "tail_batch_sizes": dict(sorted(s.tail_batch_sizes.items())), "max_batch": self.max_batch,
                    "max_queue": self.max_queue, "accepting": self._accepting and not self._stop}

    # ------------------------------------------------------------------ the engine thread

    def _run(self) -> None:
        with torch.no_grad():
            while True:
                with self._cond:
                    while not self._stop and not (self._waiting or self._prefilling or self._rows):
                        self._cond.wait()
                    if self._stop:
                        break
                try:
                    self._iteration()
                except Exception as e:  # a failed step fails the requests in it; the server keeps serving
                    log.exception("engine step failed")
                    self._fail_all(f"generation failed: {type(e).__name__}: {e}")
        self._cancel_all()

    def _iteration(self) -> None:
        self._drop_cancelled()
        self._prefill_some()
        if self._rows:
            self._decode_step()

    def _drop_cancelled(self) -> None:
        with self._cond:
            gone = [r for r in self._waiting if r.cancelled]
            for r in gone:
                self._waiting.remove(r)
        for r in gone:
            self._finish(r, "cancelled")
        for p in [p for p in self._prefilling if p.request.cancelled]:
            self._prefilling.remove(p)
            self._finish(p.request, "cancelled")
        keep = [i for i, r in enumerate(self._rows) if not r.cancelled]
        if len(keep) < len(self._rows):
            for r in self._rows:
                if r.cancelled:
                    self._finish(r, "cancelled")
            self._keep_rows(keep)

    def _keep_rows(self, keep: list[int]) -> None:
        self._rows = [self._rows[i] for i in keep]
        self._last_tokens = [self._last_tokens[i] for i in keep]
        if not keep:
            self._batch = None
        else:
            self._batch.keep(keep)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.model.config)

    def _prefill_some(self) -> None:
        joining: list[tuple[list[GenerationRequest], BatchCache, torch.Tensor]] = []
        try:
            self._prefill_into(joining)
        finally:
            self._join(joining)

    def _prefill_into(self, joining: list) -> None:
        """Prefill up to ``prefill_chunk`` prompt tokens: a long prompt alone, chunk by chunk, and the
        short tails (at most ``TAIL`` tokens left, after the prefix cache) of several requests in one
        batched forward (:meth:`_prefill_tails`)."""
        budget = self.prefill_chunk
        tail_limit = min(TAIL, self.prefill_chunk) if self._batched_tails else 0
        ready: list[_Prefill] = []
        while True:
            if not self._prefilling:
                with self._cond:
                    if not self._waiting or len(self._rows) + len(joining) + len(ready) >= self.max_batch:
                        break
                    request = self._waiting.popleft()
                self._prefilling.append(self._start_prefill(request))
            job = self._prefilling[0]
            ids = job.request.prompt_ids
            left = len(ids) - job.done
            if left <= tail_limit:
                if left > budget:
                    break
                ready.append(self._prefilling.pop(0))
                budget -= left
                continue
            if budget <= 0:
                break
            n = min(budget, left)
            chunk = torch.tensor([ids[job.done: job.done + n]], dtype=torch.long, device=self.device)
            positions = torch.arange(job.done, job.done + n, device=self.device)[None]
            out = self.model(input_ids=chunk, position_ids=positions, use_cache=True, logits_to_keep=1,
                             **cache_kwargs(job.cache))
            job.cache = output_cache(out)
            job.done += n
            budget -= n
            if job.done == len(ids):
                self._prefilling.pop(0)
                if self.prefix_cache:
                    self._remember(Snapshot.take(ids, job.cache))
                joining.append(([job.request], BatchCache.single(job.cache, len(ids), self.device),
                                out.logits[:, -1]))
        if ready:
            joining.append(self._prefill_tails(ready))

    def _prefill_tails(self, jobs: list[_Prefill]):
        """The last tokens of several prompts in one forward, exact through left padding only.

        With ``n`` the most tokens any job has left, each row's cache is cut to its prompt's first
        ``max(0, len - n)`` tokens (a prefix cut is exact: the rows have no sliding-window layer) and the
        row recomputes the rest: every row with a cache then has exactly ``n`` new tokens, and a row with
        fewer is one with no cache, whose padding is all on the left. Rows: ``[padding | cache | new]``.
        """
        self.stats.tail_batch_sizes[len(jobs)] += 1
        n = max(len(j.request.prompt_ids) - j.done for j in jobs)
        cut = [max(0, len(j.request.prompt_ids) - n) for j in jobs]
        width = max(cut)  # C: the cache slots of the batch
        cache = self._new_cache()
        if width:
            template = jobs[cut.index(width)].cache.layers
            for i, layer in enumerate(cache.layers):
                keys, values = [], []
                for job, c in zip(jobs, cut):
                    if c:
                        k, v = job.cache.layers[i].keys[:, :, :c], job.cache.layers[i].values[:, :, :c]
                    else:
                        k = template[i].keys.new_zeros(1, template[i].keys.shape[1], 0, template[i].keys.shape[3])
                        v = template[i].values.new_zeros(1, template[i].values.shape[1], 0,
                                                         template[i].values.shape[3])
                    keys.append(_left_pad(k, width))
                    values.append(_left_pad(v, width))
                layer.lazy_initialization(keys[0], values[0])
                layer.keys, layer.values = torch.cat(keys, dim=0), torch.cat(values, dim=0)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(jobs), n), pad, dtype=torch.long)
        positions = torch.zeros(len(jobs), n, dtype=torch.long)
        mask = torch.zeros(len(jobs), width + n, dtype=torch.bool)
        for r, (job, c) in enumerate(zip(jobs, cut)):
            new = job.request.prompt_ids[c:]
            ids[r, n - len(new):] = torch.tensor(new)
            positions[r, n - len(new):] = torch.arange(c, c + len(new))
            mask[r, width - c: width] = True
            mask[r, width + n - len(new):] = True
        ids, positions, mask = ids.to(self.device), positions.to(self.device), mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=True,
                         logits_to_keep=1, **cache_kwargs(cache))
        cache = output_cache(out)
        for r, job in enumerate(jobs if self.prefix_cache else ()):
            self._remember(Snapshot.from_row(job.request.prompt_ids, cache, r))
        batch = BatchCache(cache, mask, [len(j.request.prompt_ids) for j in jobs])
        return [j.request for j in jobs], batch, out.logits[:, -1]

    def _start_prefill(self, request: GenerationRequest) -> _Prefill:
        cache = self._new_cache()
        best, best_n = None, 0
        for snap in self._snapshots.values():
            n = snap.usable_prefix(request.prompt_ids)
            if n > best_n:
                best, best_n = snap, n
        if best is not None:
            best.restore(cache, best_n)
            self._snapshots.move_to_end(best.ids)
            self.stats.prefix_hits += 1
            self.stats.prefix_tokens_reused += best_n
        return _Prefill(request, cache, best_n)

    def _remember(self, snap: Snapshot) -> None:
        if self.prefix_cache == 0:
            return
        self._snapshots[snap.ids] = snap
        self._snapshots.move_to_end(snap.ids)
        while len(self._snapshots) > self.prefix_cache:
            self._snapshots.popitem(last=False)

    def _join(self, joining: list) -> None:
        """Requests whose prefill completed sample their first token; those not finished by it join the
        decode batch, all in one concatenation."""
        parts = []
        for requests, batch, logits in joining:
            keep = []
            for i, request in enumerate(requests):
                token = self._sample(request, logits[i])
                if not self._accept(request, token):
                    keep.append(i)
                    self._rows.append(request)
                    self._last_tokens.append(token)
            if keep:
                if len(keep) < len(requests):
                    batch.keep(keep)
                parts.append(batch)
        if parts and self._batch is None:
            self._batch, parts = parts[0], parts[1:]
            if not parts:
                self._batch.own()
        if parts:
            self._batch.append(parts)

    def _decode_step(self) -> None:
        batch = self._batch
        tokens = torch.tensor(self._last_tokens, dtype=torch.long, device=self.device)[:, None]  # [B, 1]
        positions = torch.tensor(batch.lengths, dtype=torch.long, device=self.device)[:, None]  # [B, 1]
        batch.extend_mask()
        out = self.model(input_ids=tokens, attention_mask=batch.mask.long(), position_ids=positions,
                         use_cache=True, **cache_kwargs(batch.cache))
        batch.cache = output_cache(out)
        logits = out.logits[:, -1]  # [B, V]
        self.stats.steps += 1
        self.stats.batch_sizes[len(self._rows)] += 1
        keep = []
        for i, request in enumerate(self._rows):
            token = self._sample(request, logits[i])
            if not self._accept(request, token):
                keep.append(i)
                self._last_tokens[i] = token
        if len(keep) < len(self._rows):
            self._keep_rows(keep)

    # ------------------------------------------------------------------ tokens to text

    def _sample(self, request: GenerationRequest, logits: torch.Tensor) -> int:
        return sample_token(logits, request.params.temperature, request.params.top_p, request.generator)

    def _accept(self, request: GenerationRequest, token: int) -> bool:
        """Record a sampled token, report new text; True when the request is finished."""
        if request.first_token_time is None:
            request.first_token_time = time.monotonic()
        params = request.params
        if token in self.eos_ids and not params.ignore_eos:
            self._flush(request, len(request.text))
            self._finish(request, "stop", count_token=True)
            return True
        request.generated.append(token)
        text = self.tokenizer.decode(request.generated, skip_special_tokens=True)
        request.text = text
        if params.stop:
            hits = [k for k in (text.find(s, max(0, request.sent - len(s) + 1)) for s in params.stop) if k >= 0]
            if hits:
                request.text = text[: min(hits)]
                self._flush(request, len(request.text))
                self._finish(request, "stop")
                return True
        if len(request.generated) >= params.max_tokens:
            self._flush(request, len(text))
            self._finish(request, "length")
            return True
        safe = len(text)
        while safe > request.sent and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 sequence: wait
            safe -= 1
        if params.stop:  # hold back what could be the start of a stop sequence
            safe = min(safe, len(text) - max(len(s) for s in params.stop) + 1)
        self._flush(request, safe)
        return False

    def _flush(self, request: GenerationRequest, upto: int) -> None:
        if upto > request.sent:
            piece = request.text[request.sent: upto]
            request.sent = upto
            self._emit(request, Event("text", text=piece))

    def _finish(self, request: GenerationRequest, reason: str, *, count_token: bool = False) -> None:
        n = len(request.generated) + (1 if count_token else 0)
        with self._cond:
            self._inflight -= 1
            self.stats.requests_done += 1
        self._emit(request, Event("done", finish_reason=reason, prompt_tokens=len(request.prompt_ids),
                                  completion_tokens=n, first_token_time=request.first_token_time))

    def _emit(self, request: GenerationRequest, event: Event) -> None:
        try:
            request.sink(event)
        except Exception:  # a sink that fails (its event loop closed) must not stop the engine
            log.debug("sink failed", exc_info=True)
            request.cancel()

    def _fail_all(self, message: str) -> None:
        requests = [p.request for p in self._prefilling] + self._rows
        self._prefilling, self._rows, self._last_tokens, self._batch = [], [], [], None
        for r in requests:
            with self._cond:
                self._inflight -= 1
            self._emit(r, Event("error", text=message))

    def _cancel_all(self) -> None:
        with self._cond:
            waiting = list(self._waiting)
            self._waiting.clear()
        for r in waiting + [p.request for p in self._prefilling] + self._rows:
            self._finish(r, "cancelled")
        self._prefilling, self._rows, self._last_tokens, self._batch = [], [], [], None


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> int:
    """One token from ``[vocab]`` logits: argmax at temperature 0, else nucleus sampling (top_p) at the
    temperature, drawn with the request's own generator."""
    logits = logits.float().cpu()
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(0) - sorted_probs  # mass of the more likely tokens
        sorted_probs[before >= top_p] = 0  # the most likely token always stays (before = 0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


__all__ = ["Engine", "EngineStopped", "Event", "GenerationRequest", "QueueFull", "SamplingParams", "sample_token"]
