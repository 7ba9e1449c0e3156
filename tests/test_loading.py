import json
from pathlib import Path

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


# ------------------------------------------------------------------ issue 24.3 / 24.4 / 25.4 / 25.6: what loading refuses


def _model_copy(tiny_model_dir, tmp_path, edit=None, **config):
    import shutil

    from safetensors.torch import load_file, save_file

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    if edit is not None:
        weights = load_file(model / "model.safetensors")
        edit(weights)
        save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    if config:
        data = json.loads((model / "config.json").read_text())
        data.update(config)
        (model / "config.json").write_text(json.dumps(data))
    return model


def test_missing_weights_are_refused_unless_asked(tiny_model_dir, tmp_path, caplog):
    def drop(w):
        del w["model.layers.0.self_attn.q_proj.weight"]

    model = _model_copy(tiny_model_dir, tmp_path, drop)
    with pytest.raises(ValueError, match=r"1 weight\(s\) missing from the files: model.layers.0.self_attn.q_proj.weight"):
        load_model(model)
    loaded, _ = load_model(model, strict=False)  # asked for explicitly: loads, and says so
    assert "loaded anyway (strict=False)" in caplog.text
    assert loaded.model.layers[0].self_attn.q_proj.weight.shape == (32, 32)


def test_unexpected_and_mis_shaped_weights_are_refused(tiny_model_dir, tmp_path):
    model = _model_copy(tiny_model_dir, tmp_path, lambda w: w.update({"model.norm.extra": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"not used by the model: model.norm.extra; loading would ignore"):
        load_model(model)

    def widen(w):
        w["lm_head.weight"] = torch.zeros(10, 32)

    model = _model_copy(tiny_model_dir, tmp_path / "b", widen)
    with pytest.raises(ValueError, match=r"another shape than config.json says: lm_head.weight \(\(10, 32\) in the files"):
        load_model(model)


def test_the_tied_smollm2_loads_strictly(load_smollm2):
    model, _ = load_smollm2()  # lm_head is tied to the embeddings: not "missing"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


@pytest.mark.parametrize("config, message", [
    ({"hidden_size": -1}, "hidden_size must be a positive integer, got -1"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer, got 0"),
    ({"num_key_value_heads": 3}, r"num_attention_heads \(4\) must be a multiple of num_key_value_heads \(3\)"),
    ({"hidden_size": 30, "head_dim": None}, r"The hidden size \(30\) is not a multiple of the number of attention"),
    ({"model_type": "nosuchmodel"}, "describes no model transformers knows"),
    ({"hidden_act": "nosuch"}, "'nosuch' is not a name transformers knows"),
])
def test_impossible_configs_are_one_line_errors(tiny_model_dir, tmp_path, config, message):
    from zebra_llm.loading import load_config

    model = _model_copy(tiny_model_dir, tmp_path, **config)
    with pytest.raises(ValueError, match=message) as e:
        load_model(model)
    assert "\n" not in str(e.value)
    if "hidden_act" not in config:  # an activation is only looked up when the model is built
        with pytest.raises(ValueError, match=message):
            load_config(model)


def test_a_model_larger_than_memory_is_refused_before_allocating(tiny_model_dir, tmp_path, monkeypatch):
    import zebra_llm.loading as loading

    model = _model_copy(tiny_model_dir, tmp_path)
    monkeypatch.setattr(loading, "available_memory", lambda device=None: 1000)  # bytes
    with pytest.raises(ValueError, match=r"its 3,\d{3},\d{3} parameters in float32: .* GiB needed, this machine has"):
        load_model(model)


def test_available_memory_and_the_check():
    from zebra_llm.loading import available_memory, check_fits_in_memory

    free = available_memory()
    assert free is None or free > 0
    check_fits_in_memory(1, "one byte")
    if free is not None:
        with pytest.raises(ValueError, match=r"^huge: .* GiB needed, this machine has"):
            check_fits_in_memory(free * 2 + 2**30, "huge")


def test_no_weights_and_shards_outside_the_directory(tiny_model_dir, tmp_path):
    model = _model_copy(tiny_model_dir, tmp_path)
    (model / "model.safetensors").rename(tmp_path / "outside.safetensors")
    with pytest.raises(FileNotFoundError, match="has a config.json but no weights"):
        load_model(model)
    for name in ("../outside.safetensors", str(tmp_path / "outside.safetensors")):
        index = {"weight_map": {"lm_head.weight": name}}
        (model / "model.safetensors.index.json").write_text(json.dumps(index))
        with pytest.raises(ValueError, match="outside the model directory"):
            load_model(model)
    (model / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")  # a link out of it, too
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"lm_head.weight": "link.safetensors"}}))
    with pytest.raises(ValueError, match="outside the model directory"):
        load_model(model)


def test_a_relative_path_that_does_not_exist_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    from zebra_llm.loading import load_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^model: models/mine does not exist \(models is a local directory"):
        load_config("models/mine")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"not a local path.*HF_HUB_OFFLINE is set"):
        load_model("nobody/nothing")


def test_concurrent_first_builds_of_the_embedded_model_build_it_once(tmp_path, monkeypatch, tiny_model_dir):
    """Two processes (here threads) asking for the embedded model on a fresh cache at once: one builds it,
    the other waits for the lock and reuses it, so no build replaces a directory another is reading."""
    import threading
    import time

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from zebra_llm import loading

    monkeypatch.setenv("ZEBRA_CACHE", str(tmp_path / "cache"))
    builds = []

    def slow_gguf(path, *, dtype, strict=True):  # the tiny model in place of the GGUF, slow enough to overlap
        builds.append(threading.get_ident())
        time.sleep(0.5)
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)

    monkeypatch.setattr(loading, "_load_gguf", slow_gguf)
    monkeypatch.setattr(loading, "smollm2_gguf", lambda: tmp_path / "unused.gguf")
    found, errors = [], []

    def ask():
        try:
            target = loading.smollm2_dir()
            found.append((target, (target / "model.safetensors").stat().st_ino))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(builds) == 1 and len(found) == 2
    assert found[0] == found[1]  # the same files: the second caller did not rebuild them
    assert loading.smollm2_dir() == found[0][0] and len(builds) == 1  # built once, then cached
