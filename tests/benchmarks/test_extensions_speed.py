"""benchmarks/extensions_speed.py's decode part at a toy size: every variant times its steps on one shared
prefill, the cache is cropped back between variants, and the table marks decode rows as having no memory."""

from __future__ import annotations

from helpers import ListQueue, load_benchmark


def test_decode_case_times_every_variant_on_one_prefill():
    speed = load_benchmark("extensions_speed")
    q = ListQueue()
    variants = ["unmodified", "dca", "self_extend", "sinks"]
    args = {"device": "cpu", "dtype": "float32", "threads": 0, "decode_steps": 2, "decode_rounds": 2, "repeats": 1}
    speed._decode_case(variants, 48, args, q)
    (rows,) = q.items
    assert [r["variant"] for r in rows] == variants
    assert all(r["part"] == "decode" and r["seq"] == 48 and r["steps"] == 4 and r["seconds"] > 0 for r in rows)
    base = {("decode", 48): rows[0]}
    speed._report(rows, base)
    assert rows[0]["time_ratio"] == 1.0 and rows[1]["mem_ratio"] is None
    table = speed.table(rows)
    assert "| decode | 48 | dca |" in table and "— | — |" in table


def test_rope_scaling_variants_decode_on_their_own_copy_and_prefill():
    """dynamic / yarn rebuild the rotary module: they decode on a copy (the other variants keep theirs),
    prefill like any method, and have no attention-only case (their kernel is causal SDPA)."""
    speed = load_benchmark("extensions_speed")
    assert speed.rope_spec("yarn", 16384) == "yarn:factor=2" and speed.rope_spec("dynamic", 32768) == "dynamic:factor=4"
    assert speed.rope_spec("linear", 16384) == "linear:factor=2"
    q = ListQueue()
    args = {"device": "cpu", "dtype": "float32", "threads": 0, "decode_steps": 2, "decode_rounds": 1, "repeats": 1}
    variants = ["unmodified", "dynamic", "dca", "yarn", "linear", "yarn+dca", "dca:temperature=true"]
    speed._decode_case(variants, 48, args, q)
    (rows,) = q.items
    assert [r["variant"] for r in rows] == variants
    assert all(r["steps"] == 2 and r["seconds"] > 0 for r in rows)
    speed._model_case("yarn", 48, args, q)
    assert q.items[-1]["variant"] == "yarn" and q.items[-1]["part"] == "prefill"
    speed._attention_case("dynamic", 48, args, q)
    assert q.items[-1] is None
    speed._model_case("dca:preset=chunkllama", 48, args, q)  # a contest label, set up as the contest does
    assert q.items[-1]["variant"] == "dca:preset=chunkllama" and q.items[-1]["part"] == "prefill"


def test_contest_labels_are_set_up_as_the_contest_sets_them_up(load_smollm2):
    speed = load_benchmark("extensions_speed")
    model = speed._apply(load_smollm2()[0], "yarn+dca", 16384)
    extension = model.config.zebra_extension
    assert model.config.rope_parameters["rope_type"] == "yarn" and extension["method"] == "dca"
    assert extension["pretraining_length"] == 16384 and model.config.rope_parameters["factor"] == 2.0
