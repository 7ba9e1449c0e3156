import json

import pytest
import torch

from zebra_llm.data.instructions import (
    IGNORE,
    build_instruction_dataset,
    encode_messages,
    load_instruction_records,
    record_to_messages,
)
from zebra_llm.train.loss import token_loss_sum


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2? Here is a long context: " + "lorem ipsum " * 20},
    {"role": "assistant", "content": "Four."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "Six, of course."},
]


def trained_text(tokenizer, ids, labels):
    return tokenizer.decode(ids[labels != IGNORE])


def test_template_masks_everything_but_the_assistant_turns(tokenizer):
    ids, labels = encode_messages(CONVERSATION, tokenizer)
    assert ids.shape == labels.shape
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert tokenizer.decode(ids) == full
    # Exactly the two answers and the template's end-of-turn markers are trained.
    assert trained_text(tokenizer, ids, labels) == "Four.<|im_end|>\nSix, of course.<|im_end|>\n"
    assert (labels[labels != IGNORE] == ids[labels != IGNORE]).all()
    prompt_len = len(tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True))
    n_prompt_tokens = len(tokenizer(full[:prompt_len], add_special_tokens=False)["input_ids"])
    assert (labels[:n_prompt_tokens] == IGNORE).all()


def test_plain_format_without_template(tokenizer):
    msgs = record_to_messages({"prompt": "Say hi", "response": "hi there", "system": "sys"})
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    ids, labels = encode_messages(msgs, tokenizer, chat_template="none")
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    assert tokenizer.decode(ids) == f"{bos}system: sys\n\nuser: Say hi\n\nassistant: hi there{eos}\n\n"
    # " hi there" merges its leading space with the response, and EOS ends it
    assert trained_text(tokenizer, ids, labels).strip() == "hi there" + tokenizer.eos_token


def test_records_file_and_errors(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"messages": CONVERSATION}) + "\n\n" + json.dumps({"prompt": "p", "response": "r"}) + "\n"
    )
    assert len(load_instruction_records(path)) == 2
    bad = [
        ({"text": "x"}, "needs 'messages'"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "role must be one of"),
        ({"messages": [{"role": "assistant", "content": "x"}]}, "prompt must come first"),
    ]
    for record, msg in bad:
        path.write_text(json.dumps(record) + "\n")
        with pytest.raises(ValueError, match=msg):
            load_instruction_records(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1"):
        load_instruction_records(path)
    with pytest.raises(FileNotFoundError, match="data.path"):
        load_instruction_records(tmp_path / "missing.jsonl")


def test_overflow_rules(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    long = {"prompt": "word " * 200, "response": "ok"}
    short = {"prompt": "hi", "response": "hello"}
    path.write_text(json.dumps(long) + "\n" + json.dumps(short) + "\n")
    ds = build_instruction_dataset(path, tokenizer, seq_len=64, overflow="drop", cache=False)
    assert (len(ds), ds.dropped) == (1, 1)
    # truncating the long one keeps only prompt tokens, so it is dropped too
    ds = build_instruction_dataset(path, tokenizer, seq_len=64, overflow="truncate", cache=False)
    assert (len(ds), ds.dropped, ds.truncated) == (1, 1, 1)
    with pytest.raises(ValueError, match="data.seq_len"):
        build_instruction_dataset(path, tokenizer, seq_len=64, overflow="error", cache=False)
    with pytest.raises(ValueError, match="no usable example"):
        build_instruction_dataset(path, tokenizer, seq_len=8, overflow="drop", cache=False)


def test_cache_gives_the_same_dataset(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("ZEBRA_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(3)))
    first = build_instruction_dataset(path, tokenizer, seq_len=64)
    assert list((tmp_path / "cache" / "instructions").iterdir())
    second = build_instruction_dataset(path, tokenizer, seq_len=64)
    assert first.fingerprint() == second.fingerprint()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_padded_batch_loss_equals_sum_of_single_examples(tmp_path, tokenizer, impl):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "d.jsonl"
    records = [
        {"messages": CONVERSATION},
        {"prompt": "Short?", "response": "Yes."},
        {"prompt": "A medium prompt " * 5, "response": "and a medium answer " * 3},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ds = build_instruction_dataset(path, tokenizer, seq_len=512, cache=False)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, attn_implementation=impl)
    )
    batch = ds.collate([0, 1, 2])
    assert batch["input_ids"].shape[0] == 3 and (batch["attention_mask"].sum(1) < batch["input_ids"].shape[1]).any()
    labels = batch.pop("labels")
    padded = token_loss_sum(model(**batch, use_cache=False).logits, labels)
    singles = 0.0
    for i in range(3):
        one = ds.collate([i])
        lab = one.pop("labels")
        singles = singles + token_loss_sum(model(**one, use_cache=False).logits, lab)
    assert torch.allclose(padded, singles, rtol=1e-5)
    assert ds.num_targets([0, 1, 2]) == sum(ds.num_targets([i]) for i in range(3))
    # and the gradients agree too
    padded.backward()
    g_batch = model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    model.zero_grad()
    for i in range(3):
        one = ds.collate([i])
        lab = one.pop("labels")
        token_loss_sum(model(**one, use_cache=False).logits, lab).backward()
    assert torch.allclose(g_batch, model.model.layers[0].self_attn.q_proj.weight.grad, rtol=1e-4, atol=1e-7)
