"""benchmarks/extensions_speed.py's decode part at a toy size: every variant times its steps on one shared
prefill, the cache is cropped back between variants, and the table marks decode rows as having no memory."""

from __future__ import annotations

from helpers import ListQueue, load_benchmark


def test_decode_case_times_every_variant_on_one_prefill():
    speed = load_benchmark("extensions_speed")
    q = ListQueue()
    variants = ["unmodified", "dca", "self_extend"]
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
