import json
import math

import pytest
import torch

from zebra_llm.eval import (
    PerplexityConfig,
    bucket_segments,
    fixed_segments,
    perplexity,
    run_perplexity,
    token_nll,
    window_segments,
)
from zebra_llm.eval.corpus import TokenDocs

from eval_helpers import tiny_llama
from helpers import LargestTensor


def _ids(n, vocab, seed=0, batch=1):
    return torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(seed))


def _hand_nll(model, ids):
    """Per-token NLL by hand: softmax of the full logits, one position at a time."""
    with torch.no_grad():
        logits = model(ids).logits.double()
    out = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64)
    for b in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            row = logits[b, t - 1]
            out[b, t - 1] = -(row[ids[b, t]] - torch.logsumexp(row, 0))
    return out


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_token_nll_equals_hand_computation(chunk):
    model = tiny_llama(300)
    ids = _ids(37, 300, batch=2)
    ours = token_nll(model, ids, chunk=chunk)
    torch.testing.assert_close(ours.double(), _hand_nll(model, ids), rtol=1e-5, atol=1e-5)
    # score_from skips targets but keeps them as context
    tail = token_nll(model, ids, score_from=20, chunk=chunk)
    torch.testing.assert_close(tail, ours[:, 19:], rtol=1e-5, atol=1e-5)


def test_perplexity_of_uniform_model_is_vocab_size():
    model = tiny_llama(300)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: p = 1/V for every token
    assert perplexity(model, _ids(50, 300)[0]) == pytest.approx(300, rel=1e-6)


def test_perplexity_known_value():
    model = tiny_llama(300)
    ids = _ids(40, 300, seed=5)
    expected = math.exp(_hand_nll(model, ids).mean().item())
    assert perplexity(model, ids) == pytest.approx(expected, rel=1e-5)


def test_token_nll_never_builds_seq_by_vocab_logits():
    vocab, n, chunk = 3000, 300, 16
    model = tiny_llama(vocab)
    ids = _ids(n, vocab)
    with LargestTensor() as probe:
        token_nll(model, ids, chunk=chunk)
    # the biggest tensor is one chunk of logits (or a view of the head's own weight)
    assert probe.largest <= max(chunk * vocab, model.lm_head.weight.numel()), (probe.largest, probe.op)
    assert probe.largest < n * vocab


def test_token_nll_rejects_bad_input():
    model = tiny_llama(50)
    with pytest.raises(ValueError, match="score_from"):
        token_nll(model, _ids(5, 50), score_from=5)
    with pytest.raises(ValueError, match=r"\[batch, seq\]"):
        token_nll(model, _ids(5, 50)[0])


def _docs(*lengths):
    return TokenDocs("test", [f"d{i}" for i in range(len(lengths))], [torch.arange(n) for n in lengths])


def test_fixed_segments_and_too_short_error():
    segs = fixed_segments(_docs(100, 40, 64), 64)
    assert [(s.name, s.start, s.end, s.score_from) for s in segs] == [("d0", 0, 64, 1), ("d2", 0, 64, 1)]
    with pytest.raises(ValueError, match=r"at least 200 tokens, but the longest has 100 tokens \(d0\)"):
        fixed_segments(_docs(100, 40), 200)


def test_window_segments_score_every_token_once():
    n, length, stride = 203, 50, 20
    segs = window_segments(_docs(n), length, stride)
    assert all(s.length == length for s in segs)
    scored = [t for s in segs for t in range(s.score_from, s.end)]
    assert scored == list(range(1, segs[-1].end))  # each target once, in order
    # every scored token after the first window has at least length - stride tokens of context
    assert all(s.score_from - s.start >= length - stride for s in segs[1:])
    # stride >= length: disjoint windows, all targets of each scored
    disjoint = window_segments(_docs(n), length, length)
    assert [(s.start, s.score_from) for s in disjoint] == [(0, 1), (50, 51), (100, 101), (150, 151)]
    with pytest.raises(ValueError, match="at least 300 tokens"):
        window_segments(_docs(n), 300, 10)


def test_bucket_segments_follow_half_open_ranges():
    segs = bucket_segments(_docs(10, 16, 17, 32, 33, 64), [16, 32, 64])
    assert [(s.group, s.name) for s in segs] == [(16, "d0"), (16, "d1"), (32, "d2"), (32, "d3"), (64, "d4"), (64, "d5")]
    with pytest.raises(ValueError, match=r"no document of test falls in any bucket \[1000\]"):
        bucket_segments(_docs(10, 20), [1000])


def test_windowed_perplexity_equals_direct_when_windows_are_disjoint(tiny_model_dir, tiny_corpus):
    """Disjoint windows are just the documents cut in pieces: check against a direct computation."""
    from zebra_llm.eval.corpus import load_token_docs
    from zebra_llm.loading import load_model

    model, tok = load_model(tiny_model_dir)
    config = PerplexityConfig(model=str(tiny_model_dir), data=str(tiny_corpus), mode="windows", lengths=[48], stride=48)
    out = run_perplexity(config, progress=False)
    docs = load_token_docs(tok, str(tiny_corpus))
    nll, count = 0.0, 0
    for t in docs.ids:
        for start in range(0, len(t) - 48 + 1, 48):
            row = token_nll(model, t[start : start + 48][None])
            nll += row.double().sum().item()
            count += row.numel()
    (row,) = out["summary"]
    assert row["tokens"] == count
    assert row["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_run_perplexity_methods_resume_and_batching(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch):
    out_path = tmp_path / "ppl.json"
    config = PerplexityConfig(
        model=str(tiny_model_dir), methods=["none", "linear:factor=2"], data=str(tiny_corpus), lengths=[32, 96]
    )
    data = run_perplexity(config, out_path, progress=False)
    saved = json.loads(out_path.read_text())
    assert saved["kind"] == "ppl" and saved["versions"]["torch"] == torch.__version__
    assert saved["config"]["methods"] == ["none", "linear:factor=2"]
    assert saved["models"]["linear:factor=2"]["max_length"] == 8 * 64
    rows = {(r["method"], r["length"]): r for r in data["summary"]}
    assert set(rows) == {("none", 32), ("none", 96), ("linear:factor=2", 32), ("linear:factor=2", 96)}
    assert all(r["docs"] == 3 for r in rows.values())
    assert rows[("none", 32)]["ppl"] != rows[("linear:factor=2", 32)]["ppl"]
    assert all(math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows.values())

    # batched: same numbers
    batched = run_perplexity(
        PerplexityConfig(**{**config.__dict__, "batch_size": 3}), None, progress=False
    )
    for r in batched["summary"]:
        assert r["ppl"] == pytest.approx(rows[(r["method"], r["length"])]["ppl"], rel=1e-5)

    # resume: nothing is recomputed; adding a length computes only that
    calls = []
    import importlib

    P = importlib.import_module("zebra_llm.eval.perplexity")

    real = P.token_nll
    monkeypatch.setattr(P, "token_nll", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    again = run_perplexity(config, out_path, progress=False)
    assert calls == [] and again["summary"] == data["summary"]
    more = PerplexityConfig(**{**config.__dict__, "lengths": [32, 96, 128]})
    run_perplexity(more, out_path, progress=False)
    assert calls and all(shape[1] == 128 for shape in calls)

    # a different corpus in the same file is refused
    other = PerplexityConfig(**{**config.__dict__, "data": "stdlib"})
    with pytest.raises(ValueError, match="different data"):
        run_perplexity(other, out_path, progress=False)


def test_run_perplexity_length_checks(tiny_model_dir, tiny_corpus):
    with pytest.raises(ValueError, match="length 300 is above what method none supports"):
        run_perplexity(PerplexityConfig(model=str(tiny_model_dir), data=str(tiny_corpus), lengths=[300]), progress=False)
    with pytest.raises(ValueError, match=r"needs a document of at least 5000 tokens, but the longest has \d+ tokens"):
        run_perplexity(
            PerplexityConfig(model=str(tiny_model_dir), methods=["none:max_length=9999"], data=str(tiny_corpus),
                             lengths=[5000]),
            progress=False,
        )


def test_bucket_mode_runs(tiny_model_dir, tiny_corpus):
    config = PerplexityConfig(model=str(tiny_model_dir), data=str(tiny_corpus), mode="buckets", buckets=[256],
                              methods=["none:max_length=256"])
    with pytest.raises(ValueError, match="no document"):
        run_perplexity(config, progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "sliding"}, "mode must be one of fixed, windows, buckets"),
        ({"mode": "windows"}, "needs --stride"),
        ({"mode": "buckets"}, "needs --buckets"),
        ({"lengths": []}, "at least one length"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"methods": ["nope"]}, "unknown method"),
    ],
)
def test_perplexity_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PerplexityConfig(**kwargs)


def test_smollm2_perplexity_on_stdlib_matches_full_logits(load_smollm2):
    """The real model (tied embeddings) through the default corpus: chunked loss == full logits."""
    model, tok = load_smollm2()
    data = run_perplexity(PerplexityConfig(lengths=[512], doc_limit=1), progress=False,
                          model_objects={"none": (model, tok)})
    (row,) = data["summary"]
    from zebra_llm.data import stdlib_corpus, tokenize_documents

    ids = tokenize_documents(stdlib_corpus()[:1], tok)[0][:512][None]
    with torch.no_grad():
        logits = model(ids).logits.double()
    ref = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).exp().item()
    assert row["ppl"] == pytest.approx(ref, rel=1e-4)
    assert 2 < row["ppl"] < 50  # a real model on real Python source (a random one: ~49k)


def test_same_docs_across_lengths(tiny_model_dir, tiny_corpus):
    from zebra_llm.eval.corpus import load_token_docs
    from zebra_llm.eval.perplexity import plan_segments
    from zebra_llm.loading import load_model

    _, tok = load_model(tiny_model_dir)
    docs = load_token_docs(tok, str(tiny_corpus))
    longest = max(docs.lengths())
    shortest = min(docs.lengths())
    lengths = [32, shortest + 1]
    same = plan_segments(PerplexityConfig(data=str(tiny_corpus), lengths=lengths), docs)
    every = plan_segments(PerplexityConfig(data=str(tiny_corpus), lengths=lengths, same_docs=False), docs)
    names = lambda segs, n: sorted(s.name for s in segs if s.group == n)  # noqa: E731
    assert names(same, 32) == names(same, shortest + 1) and len(names(same, 32)) == 2
    assert len(names(every, 32)) == 3
    with pytest.raises(ValueError, match=f"at least {longest + 1} tokens"):
        plan_segments(PerplexityConfig(data=str(tiny_corpus), lengths=[32, longest + 1]), docs)


def test_stride_above_the_window_is_refused():
    """A stride above the window would leave the tokens between windows unscored (issue 11, item 6)."""
    with pytest.raises(ValueError, match=r"stride \(60\) must not exceed the window length \(50\)"):
        window_segments(_docs(203), 50, 60)
    with pytest.raises(ValueError, match=r"stride \(60\) must not exceed the window length \(50\)"):
        PerplexityConfig(mode="windows", lengths=[50, 100], stride=60)


def test_ppl_last_quarter_is_the_last_quarter_below_one_block():
    """At 64 tokens (one 512-position block) the column used to be the whole segment's perplexity."""
    from zebra_llm.eval.perplexity import Segment, score_segments, summarize_perplexity

    model = tiny_llama(300)
    ids = _ids(64, 300)
    docs = TokenDocs("test", ["d0"], [ids[0]])
    ((seg, item),) = list(score_segments(model, docs, [Segment(0, "d0", 0, 64, 1, 64)]))
    (row,) = summarize_perplexity([{"method": "none", "length": 64, "doc": "d0", "start": 0, "end": 64, **item}])
    nll = _hand_nll(model, ids)[0]  # targets at positions 1..63
    tail = nll[48 - 1:]  # positions 48..63: the last quarter of 64
    assert row["ppl_last_quarter"] == pytest.approx(math.exp(tail.mean().item()), rel=1e-5)
    assert row["ppl_last_quarter"] != pytest.approx(row["ppl"], rel=1e-3)
    # an item written before the exact counts existed: left out rather than mislabelled
    legacy = {k: v for k, v in item.items() if not k.startswith("tail_")}
    (old,) = summarize_perplexity([{"method": "none", "length": 64, "doc": "d0", "start": 0, "end": 64, **legacy}])
    assert "ppl_last_quarter" not in old


def test_perplexity_of_too_few_tokens_is_a_clear_error():
    model = tiny_llama(300)
    with pytest.raises(ValueError, match=r"input_ids has 1 token\(s\) per sequence; at least score_from \+ 1 = 2"):
        perplexity(model, torch.tensor([5]))
    with pytest.raises(ValueError, match="at least score_from"):
        perplexity(model, torch.tensor([[5, 6, 7]]), score_from=3)
    assert math.isfinite(perplexity(model, torch.tensor([5, 6])))
