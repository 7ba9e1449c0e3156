"""Long instruction tuning on a tiny random Llama: the reported loss is the
response-token mean, LoRA trains only the adapter, resume is exact."""

import json
import os
import signal

import pytest
import torch
from train_helpers import TINY_LLAMA

from zebra_llm.data.instructions import build_instruction_dataset
from zebra_llm.train import lit
from zebra_llm.train.loss import token_loss_sum

pytestmark = pytest.mark.usefixtures("one_thread")

RECORDS = [
    {"messages": [{"role": "user", "content": "Summarise: " + "the cat sat on the mat. " * 12},
                  {"role": "assistant", "content": "A cat sat."}]},
    {"prompt": "What colour is the sky?", "response": "Blue."},
    {"prompt": "Count to five.", "response": "1 2 3 4 5"},
    {"messages": [{"role": "system", "content": "Answer in French."},
                  {"role": "user", "content": "Hello?"},
                  {"role": "assistant", "content": "Bonjour."},
                  {"role": "user", "content": "Thanks!"},
                  {"role": "assistant", "content": "De rien."}]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm2_dir):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = tmp_path_factory.mktemp("lit") / "base"
    cfg = dict(TINY_LLAMA)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("litdata") / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def _cfg(model_dir, data_file, out, **train):
    return {
        "model": {"source": str(model_dir)},
        "data": {"path": str(data_file), "seq_len": 256},
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "train": {"steps": 4, "batch_size": 4, "micro_batch_size": 1, "output_dir": str(out), "progress": False, **train},
    }


def test_reported_loss_is_the_response_token_mean(tmp_path, model_dir, data_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = lit(_cfg(model_dir, data_file, tmp_path / "full", steps=3))
    # step 1 sees all four examples (batch 4) from the untouched base model
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    ds = build_instruction_dataset(data_file, AutoTokenizer.from_pretrained(model_dir), seq_len=256)
    total = 0.0
    with torch.no_grad():
        for i in range(len(ds)):
            batch = ds.collate([i])
            labels = batch.pop("labels")
            total += float(token_loss_sum(base(**batch, use_cache=False).logits, labels))
    assert result.losses[0] == pytest.approx(total / ds.num_targets(range(len(ds))), rel=1e-5)
    assert result.losses[-1] < result.losses[0]
    AutoModelForCausalLM.from_pretrained(result.final_dir)


def test_lora_trains_the_adapter_only_and_resumes_exactly(tmp_path, model_dir, data_file):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    lora = {"enabled": True, "r": 4, "alpha": 8}
    cfg = _cfg(model_dir, data_file, tmp_path / "ref")
    cfg["model"]["lora"] = lora
    ref = lit(cfg)

    cfg = _cfg(model_dir, data_file, tmp_path / "run")
    cfg["model"]["lora"] = lora

    def stop(step, record):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    part = lit(cfg, callbacks=[stop])
    assert part.interrupted
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002"
    assert (ckpt / "adapter_model.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    cfg["train"]["resume"] = True
    rest = lit(cfg)
    assert part.losses + rest.losses == ref.losses

    # the base weights never moved; the merged final model differs from the base by the adapter
    base = load_file(model_dir / "model.safetensors")
    peft_dir = tmp_path / "run" / "final" / "adapter"
    assert (peft_dir / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base[q])
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.equal(merged.state_dict()[norm], base[norm])


def test_missing_data_fails_before_training(tmp_path, model_dir, data_file):
    with pytest.raises(FileNotFoundError, match="data.path"):
        lit(_cfg(model_dir, tmp_path / "nope.jsonl", tmp_path / "x"))
    with pytest.raises(ValueError, match="data.path is required"):
        cfg = _cfg(model_dir, data_file, tmp_path / "x")
        cfg["data"].pop("path")
        lit(cfg)
    assert not (tmp_path / "x").exists()
