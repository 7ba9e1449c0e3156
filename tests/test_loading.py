import json

import pytest
import torch

from zebra_llm.data import Document, load_documents, stdlib_corpus
from zebra_llm.loading import ModelSource, load_model, parse_dtype


def test_model_source_kinds(tmp_path):
    assert ModelSource.parse("smollm2").kind == "embedded"
    assert ModelSource.parse("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert ModelSource.parse(tmp_path / "m").kind == "directory"
    with pytest.raises(FileNotFoundError, match="config.json"):
        (tmp_path / "empty").mkdir()
        ModelSource.parse(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="GGUF"):
        ModelSource.parse(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ModelSource.parse("./no/such/model")


def test_parse_dtype():
    assert parse_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        parse_dtype("int8")


def test_embedded_smollm2_loads(load_smollm2):
    model, tok = load_smollm2()
    assert model.config.model_type == "llama"
    assert model.config.num_hidden_layers == 30 and model.config.max_position_embeddings == 8192
    assert not hasattr(model.config, "quantization_config")
    ids = tok("def f(x):\n    return x", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 49152) and torch.isfinite(logits).all()
    # a real model predicts code: after "return" the most likely next token is not garbage
    assert tok.pad_token is not None


def test_stdlib_corpus_is_long():
    docs = stdlib_corpus()
    names = [d.name for d in docs]
    assert names[0] == "_pydecimal.py" and "pydoc_data/topics.py" in names
    assert all(len(d.text) > 100_000 for d in docs)


def test_load_documents_formats(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.md").write_text("one")
    (tmp_path / "d" / "y.txt").write_text("two")
    (tmp_path / "r.jsonl").write_text(json.dumps({"text": "first"}) + "\n\n" + json.dumps({"text": "second"}) + "\n")
    assert load_documents(tmp_path / "a.txt") == [Document("a.txt", "hello world")]
    assert [d.text for d in load_documents(tmp_path / "d")] == ["one", "two"]
    assert [d.text for d in load_documents(tmp_path / "r.jsonl")] == ["first", "second"]
    assert [d.text for d in load_documents(tmp_path / "r.jsonl", limit=1)] == ["first"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["p1", "p2"]}), tmp_path / "t.parquet")
    assert [d.text for d in load_documents(tmp_path / "t.parquet", field="body")] == ["p1", "p2"]
    with pytest.raises(ValueError, match="column 'text'"):
        load_documents(tmp_path / "t.parquet")


def test_load_documents_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_documents(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="no documents"):
        load_documents(tmp_path / "empty.txt")
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(ValueError, match="field 'text'"):
        load_documents(tmp_path / "bad.jsonl")
    (tmp_path / "broken.jsonl").write_text("{nope\n")
    with pytest.raises(ValueError, match="line 1"):
        load_documents(tmp_path / "broken.jsonl")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ValueError, match="no documents"):
        load_documents(tmp_path / "emptydir")


def test_tokenize_documents_cached(tmp_path, monkeypatch, smollm2_dir):
    from transformers import AutoTokenizer

    from zebra_llm.data import tokenize_documents

    monkeypatch.setenv("ZEBRA_CACHE", str(tmp_path))
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    docs = [Document("a", "def f(x):\n    return x\n"), Document("b", "The grass is green.")]
    first = tokenize_documents(docs, tok)
    assert first[0][0].item() == tok.bos_token_id
    assert first[0][1:].tolist() == tok(docs[0].text, add_special_tokens=False).input_ids
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 2
    again = tokenize_documents(docs, tok)
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    nobos = tokenize_documents(docs[:1], tok, add_bos=False)[0]
    assert torch.equal(nobos, first[0][1:])
