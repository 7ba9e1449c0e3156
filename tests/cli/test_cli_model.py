import json

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from zebra_llm import ZebraForCausalLM
from zebra_llm.cli import main

from helpers import max_abs_err


def _run(capsys, *argv):
    try:
        main(list(argv))
    except SystemExit as e:
        code = e.code
    else:
        code = 0
    out = capsys.readouterr()
    return code, out.out, out.err


def _tiny_llama(path):
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, initializer_range=0.1)
    ).eval()
    model.save_pretrained(path)
    return model


def test_convert_and_export(tmp_path, capsys):
    source = _tiny_llama(tmp_path / "llama")
    code, out, err = _run(capsys, "convert", str(tmp_path / "llama"), str(tmp_path / "zebra"),
                          "--attention", "group", "--layer-group-size", "2", "--window", "8")
    assert code == 0, err
    zebra = AutoModelForCausalLM.from_pretrained(tmp_path / "zebra").eval()
    assert isinstance(zebra, ZebraForCausalLM) and zebra.config.layer_types[:2] == ["full_attention", "sliding_attention"]
    ids = torch.randint(0, 200, (1, 8))
    with torch.no_grad():
        assert max_abs_err(zebra(ids).logits, source(ids).logits) <= 1e-4  # within the window: unchanged

    code, out, err = _run(capsys, "export", str(tmp_path / "zebra"), str(tmp_path / "stock"))
    assert code == 0, err
    assert "ministral" in out
    assert json.loads((tmp_path / "stock" / "config.json").read_text())["sliding_window"] == 8

    code, out, err = _run(capsys, "convert", str(tmp_path / "llama"), str(tmp_path / "portable"), "--portable",
                          "--window", "8")
    assert code == 0, err
    assert json.loads((tmp_path / "portable" / "config.json").read_text())["model_type"] == "ministral"


def test_bad_input_is_one_line_exit_2(tmp_path, capsys):
    _tiny_llama(tmp_path / "llama")
    capsys.readouterr()
    code, out, err = _run(capsys, "convert", str(tmp_path / "llama"), str(tmp_path / "z"), "--attention", "zigzag")
    assert code == 2 and err.startswith("error:") and "attention" in err and len(err.strip().splitlines()) == 1
    code, out, err = _run(capsys, "convert", str(tmp_path / "missing"), str(tmp_path / "z"))
    assert code == 2 and "does not exist" in err
    code, out, err = _run(capsys, "convert", str(tmp_path / "llama"), str(tmp_path / "z"), "--window", "0")
    assert code == 2 and "window" in err
    assert not (tmp_path / "z").exists()


def test_presets_and_flops(capsys):
    code, out, _ = _run(capsys, "presets")
    assert code == 0 and "debug" in out and "llama2-7b" in out
    code, out, _ = _run(capsys, "flops", "cpu-20m", "--seq-len", "4096", "--seq-len", "16384")
    assert code == 0
    rows = [line.split() for line in out.splitlines()[1:]]
    assert [r[0] for r in rows] == ["4096", "16384"]
    assert float(rows[1][-1]) < float(rows[0][-1]) < 1  # Zebra saves more at longer sequences
