"""The serving engine without HTTP: batched decoding of left-padded stacked caches equals each request
alone (logits, and greedy tokens through the engine), under DCA, the unmodified model, the other
extension methods and a Zebra model with sliding-window layers; the prefix cache; sampling; stops."""

from __future__ import annotations

import threading

import pytest
import torch

pytest.importorskip("fastapi")

from zebra_llm.eval.loaded import load_with_method  # noqa: E402
from zebra_llm.hf.compat import cache_kwargs, output_cache  # noqa: E402
from zebra_llm.serve.batch_cache import BatchCache, Snapshot, has_sliding_layers  # noqa: E402
from zebra_llm.serve.engine import Engine, GenerationRequest, QueueFull, SamplingParams, sample_token  # noqa: E402

ZEBRA = "zebra:layer_group_size=2,window=16"
# lengths straddle the tiny model's DCA chunk (48 of a trained context of 64) and Zebra's window (16)
LENGTHS = (20, 70, 130, 5, 99)


def _prompts(lengths=LENGTHS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 1000, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    cache = {}

    def get(method):
        if method not in cache:
            cache[method] = load_with_method(str(tiny_model_dir), method)
        return cache[method]

    return get


def _prefill(model, ids):
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    x = torch.tensor([ids])
    out = model(input_ids=x, position_ids=torch.arange(len(ids))[None], use_cache=True, **cache_kwargs(cache))
    return output_cache(out), out.logits[0, -1]


@pytest.mark.parametrize("method", ["dca", "none", ZEBRA, "self_extend:group_size=4,neighbor_window=16"])
def test_padded_batch_decode_equals_each_row_alone(models, method, monkeypatch):
    """The oracle: three decode steps of a batch stacked from caches of different lengths (one row
    leaves after the first step) give each row's logits from decoding it alone."""
    from zebra_llm.serve import batch_cache

    monkeypatch.setattr(batch_cache, "HEADROOM", 1)  # the batch's layers grow their buffers mid-way
    lm = models(method)
    model = lm.model
    prompts = _prompts()[:4]
    alone = []
    with torch.no_grad():
        for ids in prompts:
            cache, logits = _prefill(model, ids)
            steps, token, pos = [], int(logits.argmax()), len(ids)
            for _ in range(3):
                out = model(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[pos]]), use_cache=True,
                            **cache_kwargs(cache))
                cache, logits, pos = output_cache(out), out.logits[0, -1], pos + 1
                steps.append(logits)
                token = int(logits.argmax())
            alone.append(steps)
        rows, tokens = [], []
        for ids in prompts:
            cache, logits = _prefill(model, ids)
            rows.append(BatchCache.single(cache, len(ids), torch.device("cpu")))
            tokens.append(int(logits.argmax()))
        batch = rows[0]
        batch.append(rows[1:2])  # one row joins, then two at once
        batch.append(rows[2:])
        if method == ZEBRA:
            assert has_sliding_layers(batch.cache), "the Zebra model's local layers keep a sliding-window cache"
        assert any(isinstance(layer, batch_cache.GrowingLayer) for layer in batch.cache.layers)
        rows = list(range(len(prompts)))
        for step in range(3):
            positions = torch.tensor(batch.lengths)[:, None]
            batch.extend_mask()
            out = model(input_ids=torch.tensor(tokens)[:, None], attention_mask=batch.mask.long(),
                        position_ids=positions, use_cache=True, **cache_kwargs(batch.cache))
            batch.cache = output_cache(out)
            for i, r in enumerate(rows):
                torch.testing.assert_close(out.logits[i, -1], alone[r][step], rtol=1e-4, atol=1e-4)
            tokens = [int(out.logits[i, -1].argmax()) for i in range(len(rows))]
            if step == 0:  # the longest row leaves: the batch drops its padding-only slots
                drop = max(range(len(rows)), key=lambda i: len(prompts[rows[i]]))
                keep = [i for i in range(len(rows)) if i != drop]
                longest = batch.length
                batch.keep(keep)
                assert batch.length < longest
                rows, tokens = [rows[i] for i in keep], [tokens[i] for i in keep]


def _run(engine, prompts, params):
    """Submit every prompt at once; the generated tokens and finish events per prompt."""
    done, events, requests = threading.Event(), {}, []
    for i, ids in enumerate(prompts):
        def sink(e, i=i):
            if e.kind != "text":
                events[i] = e
                if len(events) == len(prompts):
                    done.set()
        requests.append(GenerationRequest(ids, params, sink))
    for r in requests:
        engine.submit(r)
    assert done.wait(60), "the engine did not finish in 60 s"
    return [r.generated for r in requests], [events[i] for i in range(len(prompts))]


@pytest.mark.parametrize("method", ["dca", "none", ZEBRA])
def test_engine_greedy_tokens_alone_equal_concurrent(models, method):
    lm = models(method)
    engine = Engine(lm.model, lm.tokenizer, prefill_chunk=32, prefix_cache=0).start()
    try:
        params = SamplingParams(max_tokens=12, temperature=0)
        prompts = _prompts()
        alone = [_run(engine, [p], params)[0][0] for p in prompts]
        together, events = _run(engine, prompts, params)
        assert together == alone
        assert all(e.prompt_tokens == len(p) for e, p in zip(events, prompts))
        stats = engine.snapshot_stats()
        assert max(stats["batch_sizes"]) >= 3, f"the requests were not decoded together: {stats['batch_sizes']}"
        # and each equals transformers' own greedy generate
        for ids, tokens in zip(prompts[:2], alone):
            x = torch.tensor([ids])
            ref = lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=12,
                                    do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
            eos = engine.eos_ids & set(ref)
            if eos:
                ref = ref[: min(ref.index(t) for t in eos)]
            assert tokens == ref
    finally:
        engine.stop()


def test_prefix_cache_reuses_a_shared_prefix_exactly(models):
    lm = models("dca")
    shared = _prompts((90,), seed=3)[0]
    prompts = [shared + tail for tail in _prompts((7, 11, 4), seed=4)]
    params = SamplingParams(max_tokens=10, temperature=0)
    cold = Engine(lm.model, lm.tokenizer, prefix_cache=0).start()
    warm = Engine(lm.model, lm.tokenizer, prefix_cache=2).start()
    try:
        expected = [_run(cold, [p], params)[0][0] for p in prompts]
        got = [_run(warm, [p], params)[0][0] for p in prompts]
        assert got == expected
        stats = warm.snapshot_stats()
        assert stats["prefix_hits"] == 2 and stats["prefix_tokens_reused"] == 2 * len(shared)
    finally:
        cold.stop()
        warm.stop()


@pytest.mark.parametrize("method", ["dca", "none"])
def test_batched_prefill_tails_equal_each_prompt_alone(models, method):
    """Short prompts, and long ones whose prefix is cached, arriving together are prefilled in one
    forward (rows cut to a common number of new tokens, left padding only): same tokens as alone."""
    lm = models(method)
    shared = _prompts((80,), seed=5)[0]
    short = _prompts((3, 17, 40, 9), seed=6)
    tails = [shared + t for t in _prompts((2, 30, 11), seed=7)]
    params = SamplingParams(max_tokens=8, temperature=0)
    engine = Engine(lm.model, lm.tokenizer, prefix_cache=2).start()
    try:
        _run(engine, [shared + [7]], params)  # caches the shared prefix
        prompts = short + tails
        alone = [_run(engine, [p], params)[0][0] for p in prompts]
        together, _ = _run(engine, prompts, params)
        assert together == alone
        assert max(engine.snapshot_stats()["tail_batch_sizes"]) >= 4
    finally:
        engine.stop()
    for ids, tokens in zip(prompts[:1] + prompts[-1:], alone[:1] + alone[-1:]):
        x = torch.tensor([ids])
        ref = lm.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8,
                                do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
        eos = engine.eos_ids & set(ref)
        assert tokens == (ref[: min(ref.index(t) for t in eos)] if eos else ref)


def test_snapshot_prefix_rules(models):
    lm = models("dca")
    cache, _ = _prefill(lm.model, list(range(3, 23)))
    snap = Snapshot.take(range(3, 23), cache)
    assert snap.truncatable
    assert snap.usable_prefix(list(range(3, 13)) + [999]) == 10  # cut to the common prefix
    assert snap.usable_prefix(list(range(3, 23))) == 19  # the last token is always computed
    assert snap.usable_prefix([999, 4, 5]) == 0
    zebra = models(ZEBRA)
    cache, _ = _prefill(zebra.model, list(range(3, 23)))
    snap = Snapshot.take(range(3, 23), cache)
    assert not snap.truncatable  # sliding layers dropped what a shorter prefix would need
    assert snap.usable_prefix(list(range(3, 13)) + [999]) == 0
    assert snap.usable_prefix(list(range(3, 23)) + [5]) == 20


def test_seeded_sampling_does_not_depend_on_the_batch(models):
    lm = models("dca")
    engine = Engine(lm.model, lm.tokenizer).start()
    try:
        prompts = _prompts()[:3]
        params = [SamplingParams(max_tokens=8, temperature=1.0, top_p=0.9, seed=s) for s in (1, 2, 3)]
        alone = [_run(engine, [p], q)[0][0] for p, q in zip(prompts, params)]
        again = [_run(engine, [p], q)[0][0] for p, q in zip(prompts, params)]
        assert alone == again
    finally:
        engine.stop()


def test_sample_token_top_p_keeps_the_nucleus():
    logits = torch.tensor([0.0, 3.0, 2.9, -5.0])
    g = torch.Generator().manual_seed(0)
    assert sample_token(logits, 0, 1.0, g) == 1
    draws = {sample_token(logits, 1.0, 0.5, g) for _ in range(50)}
    assert draws == {1, 2} or draws == {1}  # tokens 0 and 3 lie outside the 0.5 nucleus
    assert {sample_token(logits, 1.0, 1e-6, g) for _ in range(20)} == {1}


def test_stop_sequences_cut_the_text_and_hold_back_partial_matches(models):
    lm = models("none")
    engine = Engine(lm.model, lm.tokenizer).start()
    try:
        prompt = _prompts((30,))[0]
        free, _ = _run(engine, [prompt], SamplingParams(max_tokens=12, temperature=0))
        text = lm.tokenizer.decode(free[0], skip_special_tokens=True)
        stop = text[len(text) // 2: len(text) // 2 + 3]
        pieces, done = [], threading.Event()

        def sink(e):
            if e.kind == "text":
                pieces.append(e.text)
            else:
                pieces.append(e)
                done.set()

        engine.submit(GenerationRequest(prompt, SamplingParams(max_tokens=12, temperature=0, stop=(stop,)), sink))
        assert done.wait(30)
        assert pieces[-1].finish_reason == "stop"
        out = "".join(pieces[:-1])
        assert out == text[: text.find(stop)] and stop not in out
    finally:
        engine.stop()


def test_queue_bound_and_stop_cancels_everything(models):
    lm = models("none")
    engine = Engine(lm.model, lm.tokenizer, max_batch=1, max_queue=1)  # not started: nothing runs
    events = []
    for _ in range(2):
        engine.submit(GenerationRequest([5, 6, 7], SamplingParams(max_tokens=4), events.append))
    with pytest.raises(QueueFull, match="retry later"):
        engine.submit(GenerationRequest([5, 6, 7], SamplingParams(max_tokens=4), events.append))
    engine.start()
    engine.stop()
    done = [e for e in events if e.kind != "text"]
    assert len(done) == 2 and all(e.kind == "done" for e in done)


def test_sampling_params_are_checked():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(max_tokens=1, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(max_tokens=1, top_p=0)
    with pytest.raises(ValueError, match="prompt"):
        GenerationRequest([], SamplingParams(max_tokens=1), print)
