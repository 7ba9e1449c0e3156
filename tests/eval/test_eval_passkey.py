import random

import pytest
import torch

from zebra_llm import hf
from zebra_llm.eval.passkey import FILLER, PasskeyTask, passkey_prompt, run_passkey
from zebra_llm.eval.retrieval import RetrievalConfig, first_number_matches, split_filler


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


def test_exact_match_scoring_rejects_near_misses():
    assert first_number_matches(" 12345.", "12345")
    assert first_number_matches("12345 is the pass key", "12345")
    assert first_number_matches("\nThe pass key is 12345", "12345")
    for near in (" 1234.", " 123456", " 12354", " 1 2345", " 12,345", " twelve thousand", "", " 012345"):
        assert not first_number_matches(near, "12345"), near


def test_split_filler_whole_sentences_and_depth():
    unit = [1, 2, 3, 4]
    before, after = split_filler(4 * 10 + 3, unit, 0.3)
    assert before == [2, 3, 4] + unit * 3 and after == unit * 7
    assert split_filler(8, unit, 0.0) == ([], unit * 2)
    assert split_filler(8, unit, 1.0) == (unit * 2, [])


@pytest.mark.parametrize("length", [200, 333, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_prompt_exact_length_and_depth(tokenizer, length, depth):
    p = passkey_prompt(tokenizer, length, depth, key_seed=3)
    assert len(p.ids) == length
    text = tokenizer.decode(p.ids)
    assert text.startswith(tokenizer.bos_token + "There is an important info hidden inside a lot of irrelevant text.")
    assert text.endswith("\nWhat is the pass key? The pass key is")
    assert f"The pass key is {p.answer}. Remember it. {p.answer} is the pass key." in text
    assert len(p.answer) == 5 and p.answer[0] != "0"
    assert text.count(p.answer) == 2 and FILLER in text
    # the needle sits at the requested fraction of the filler (to within one filler sentence group)
    unit = len(tokenizer(FILLER + " ", add_special_tokens=False).input_ids)
    assert abs(p.needle_position / length - depth) <= (unit + 60) / length
    assert tokenizer.decode(p.ids[p.needle_position :]).lstrip("\n").startswith("The pass key is")


def test_passkey_prompt_too_short(tokenizer):
    with pytest.raises(ValueError, match="length 20 is too short; the prompt needs at least"):
        passkey_prompt(tokenizer, 20, 0.5)


def test_keys_are_reproducible_and_vary():
    task = PasskeyTask()
    a = [task.new_key(random.Random(f"0/100/0.5/{t}")) for t in range(5)]
    assert a == [task.new_key(random.Random(f"0/100/0.5/{t}")) for t in range(5)]
    assert len(set(a)) == 5


def _summary(data):
    return {(r["method"], r["length"], r["depth"]): r["accuracy"] for r in data["summary"]}


def test_run_passkey_tiny_model_prefix_reuse_and_batching_are_exact(tiny_model_dir, tmp_path):
    base = dict(model=str(tiny_model_dir), methods=["none", "linear:factor=2", "dynamic:factor=2"],
                lengths=[130], depths=[0.0, 0.5], trials=2, max_new_tokens=5)
    reused = run_passkey(RetrievalConfig(**base), tmp_path / "pk.json", progress=False)
    full = run_passkey(RetrievalConfig(**base, reuse_prefix=False), progress=False)
    batched = run_passkey(RetrievalConfig(**base, batch_size=3), progress=False)
    outputs = lambda d: [(i["method"], i["length"], i["depth"], i["trial"], i["output"]) for i in d["items"]]  # noqa: E731
    assert outputs(reused) == outputs(full) == outputs(batched)
    assert len(reused["items"]) == 3 * 1 * 2 * 2
    assert all(i["correct"] == first_number_matches(i["output"], i["answer"]) for i in reused["items"])
    # a random model does not find keys: its outputs are not the answers
    assert sum(i["correct"] for i in reused["items"]) == 0
    # same keys for every method
    keys = {(i["length"], i["depth"], i["trial"]): i["answer"] for i in reused["items"] if i["method"] == "none"}
    assert all(keys[(i["length"], i["depth"], i["trial"])] == i["answer"] for i in reused["items"])
    assert ("none", 130, "all") in _summary(reused)


def test_prefix_cache_continuation_equals_full_forward(tiny_model_dir):
    from zebra_llm.eval.retrieval import prefill_cache
    from zebra_llm.loading import load_model

    model, _ = load_model(tiny_model_dir)
    ids = torch.randint(0, 1000, (1, 90), generator=torch.Generator().manual_seed(0))
    cache = prefill_cache(model, ids[0, :60].tolist())
    with torch.no_grad():
        cont = model(ids[:, 60:], **hf.cache_kwargs(cache)).logits
        full = model(ids).logits[:, 60:]
    torch.testing.assert_close(cont, full, rtol=1e-4, atol=1e-4)


def test_run_passkey_errors(tiny_model_dir):
    with pytest.raises(ValueError, match="above what method none supports"):
        run_passkey(RetrievalConfig(model=str(tiny_model_dir), lengths=[257], depths=[0.5], trials=1), progress=False)
    with pytest.raises(ValueError, match="depths must be in"):
        RetrievalConfig(depths=[1.5])
    with pytest.raises(ValueError, match="trials must be >= 1"):
        RetrievalConfig(trials=0)


def test_smollm2_finds_passkey_at_1k(load_smollm2):
    """Golden number: the real SmolLM2-135M retrieves the key at 1024 tokens, depths 0 and 0.5."""
    model, tok = load_smollm2()
    data = run_passkey(
        RetrievalConfig(lengths=[1024], depths=[0.0, 0.5], trials=1), progress=False,
        model_objects={"none": (model, tok)},
    )
    assert [i["correct"] for i in data["items"]] == [True] * 2, [i["output"] for i in data["items"]]


def test_number_in_answer_is_a_whole_number_string_match():
    from zebra_llm.eval.retrieval import number_in_answer

    assert number_in_answer("The access code of project sparrow-921 is 18271.", "18271")
    assert number_in_answer("18271", "18271")
    assert not number_in_answer("The access code of project sparrow-921 is 182710.", "18271")
    assert not number_in_answer("code 118271", "18271")
    assert not number_in_answer("The access code of project sparrow-921 is", "18271")
