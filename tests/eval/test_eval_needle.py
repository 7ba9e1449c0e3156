import random

import pytest
import torch

from zebra_llm.eval.corpus import TokenDocs, load_token_docs
from zebra_llm.eval.needle import INTRO, SNAP_TOKENS, needle_task, run_needle
from zebra_llm.eval.retrieval import RetrievalConfig


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module")
def stdlib_task(tokenizer):
    docs = load_token_docs(tokenizer, None, limit=1)  # _pydecimal.py: 61k tokens
    return needle_task(tokenizer, docs)


@pytest.mark.parametrize("length", [300, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.4, 1.0])
def test_needle_prompt_over_real_corpus(tokenizer, stdlib_task, length, depth):
    p = stdlib_task.build(tokenizer, length, depth, random.Random(7))
    assert len(p.ids) == length
    text = tokenizer.decode(p.ids)
    assert "Some special magic numbers are hidden within the following text." in text
    assert "Written by Eric Price" in text  # the haystack is _pydecimal.py's own text
    needle = tokenizer.decode(p.ids[p.needle_position :])
    assert needle.startswith("\nOne of the special magic numbers for ") and f" is: {p.answer}." in needle
    assert text.endswith("mentioned in the provided text is") and len(p.answer) == 7
    # the needle opens a line (snapped back to a line break) near the requested depth
    before = tokenizer.decode(p.ids[: p.needle_position])
    assert depth == 0.0 or before.endswith("\n")
    head = 1 + len(tokenizer(INTRO, add_special_tokens=False).input_ids)
    question_start = text.rindex("\nWhat is the special magic number")
    rest = len(tokenizer(text[question_start:], add_special_tokens=False).input_ids)
    needle_len = len(tokenizer(needle[: needle.index(".\n") + 2], add_special_tokens=False).input_ids)
    size = length - head - needle_len - rest
    cut = p.needle_position - head
    assert round(depth * size) - SNAP_TOKENS <= cut <= round(depth * size)


def test_needle_haystack_too_short(tokenizer):
    docs = TokenDocs("tiny.txt", ["tiny.txt"], [torch.tensor(tokenizer("short text\n").input_ids)])
    task = needle_task(tokenizer, docs)
    with pytest.raises(ValueError, match=r"haystack needs \d+ tokens for length 500, but tiny.txt has \d+"):
        task.build(tokenizer, 500, 0.5, random.Random(0))


def test_run_needle_tiny_model(tiny_model_dir, tiny_corpus, tmp_path):
    config = RetrievalConfig(model=str(tiny_model_dir), methods=["none", "yarn:factor=2"], lengths=[120, 200],
                             depths=[0.0, 1.0], trials=2, max_new_tokens=4, batch_size=2)
    data = run_needle(config, tmp_path / "needle.json", data=str(tiny_corpus), progress=False)
    assert data["kind"] == "needle" and data["config"]["data"] == str(tiny_corpus)
    assert len(data["items"]) == 2 * 2 * 2 * 2
    assert {(r["method"], r["length"], r["depth"]) for r in data["summary"]} >= {("none", 120, 0.0), ("yarn:factor=2", 200, "all")}
    unbatched = run_needle(RetrievalConfig(**{**config.__dict__, "batch_size": 1, "reuse_prefix": False}),
                           data=str(tiny_corpus), progress=False)
    assert [i["output"] for i in unbatched["items"]] == [i["output"] for i in data["items"]]


def test_needle_and_ruler_haystacks_take_an_encoding(tiny_model_dir, tiny_corpus, tmp_path):
    """A latin-1 haystack file: strict UTF-8 by default (an error naming file and offset), read with
    ``encoding=`` (``--encoding`` of ``zebra eval needle`` and ``zebra eval ruler``)."""
    from zebra_llm.cli import app
    from zebra_llm.cli._common import run_guarded
    from zebra_llm.eval.ruler import Haystacks

    corpus = tmp_path / "latin1"
    corpus.mkdir()
    for f in sorted(tiny_corpus.iterdir()):
        (corpus / f.name).write_bytes(f.read_text().replace("the", "th\u00e9").encode("latin-1"))
    config = RetrievalConfig(model=str(tiny_model_dir), lengths=[120], depths=[0.5], trials=1, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"is not valid utf-8 text: byte 0xe9 at offset"):
        run_needle(config, data=str(corpus), progress=False)
    data = run_needle(config, data=str(corpus), encoding="latin-1", progress=False)
    assert data["config"]["encoding"] == "latin-1" and len(data["items"]) == 1
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="byte 0xe9"):
        Haystacks.from_corpus(tok, str(corpus))
    assert "th\u00e9" in tok.decode(Haystacks.from_corpus(tok, str(corpus), encoding="latin-1").stream[:2000])
    out = tmp_path / "needle.json"
    assert run_guarded(app, ["eval", "needle", "--model", str(tiny_model_dir), "--data", str(corpus), "--encoding", "latin-1",
                 "--lengths", "120", "--depths", "0.5", "--trials", "1", "--max-new-tokens", "2", "--no-figure",
                 "--no-progress", "-o", str(out)]) == 0
    assert out.is_file()
