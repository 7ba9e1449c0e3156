"""The training engine on a tiny random Llama (CPU, float32): exact resume,
gradient accumulation, options applied from outside the model, checkpoints."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import losses_of, tiny_pretrain_config, write_tiny_llama_config

from zebra_llm.train import pretrain
from zebra_llm.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 8


def _config(tmp, out, **sections):
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp), out, **sections)
    cfg["train"].update({"steps": STEPS, "micro_batch_size": 2})
    for section, values in sections.items():
        cfg[section].update(values)
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its per-step losses and its directory."""
    tmp = tmp_path_factory.mktemp("reference")
    result = pretrain(_config(tmp, tmp / "run"))
    assert not result.interrupted and result.step == STEPS
    return result


def test_loss_goes_down(reference):
    first, last = reference.losses[0], reference.losses[-1]
    assert last < first - 0.3, reference.losses


def test_sigterm_then_resume_equals_uninterrupted(tmp_path, reference):
    cfg = _config(tmp_path, tmp_path / "run")
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL unless the process was started with it ignored

    def sigterm_after_3(step, record):
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, through the real handler

    part = pretrain(cfg, callbacks=[sigterm_after_3])
    assert part.interrupted and part.step == 3 and part.final_dir is None
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step_00000003"]
    assert signal.getsignal(signal.SIGTERM) is before  # handler removed again

    cfg["train"]["resume"] = True
    rest = pretrain(cfg)
    assert rest.start_step == 3 and rest.step == STEPS
    assert part.losses + rest.losses == reference.losses  # bit-exact on CPU float32
    assert losses_of(tmp_path / "run") == reference.losses  # metrics.jsonl has each step once
    # no temporary directory is left behind by the atomic writes
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.subprocess
def test_killed_process_resumes_exactly(tmp_path, reference):
    """A real `zebra train pretrain` process killed with SIGTERM, resumed with --resume."""
    import yaml

    from zebra_llm.cli import app
    from zebra_llm.cli._common import run_guarded

    out = tmp_path / "run"
    cfg = _config(tmp_path, out)
    cfg["train"]["save_every"] = 0
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    src = str(Path(__import__("zebra_llm").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "zebra_llm", "train", "pretrain", "-c", str(tmp_path / "cfg.yaml")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "rerun with --resume" in err
    (stopped,) = list_checkpoints(out)
    k = json.loads((stopped / "trainer_state.json").read_text())["step"]
    assert 2 <= k < STEPS
    assert run_guarded(app, ["train", "pretrain", "-c", str(tmp_path / "cfg.yaml"), "--resume"]) == 0
    assert losses_of(out) == pytest.approx(reference.losses, rel=1e-6, abs=0)


def test_gradient_accumulation_equals_one_big_micro_batch(tmp_path, reference):
    cfg = _config(tmp_path, tmp_path / "acc", train={"micro_batch_size": 1, "steps": 3})
    cfg["optim"]["warmup_steps"] = 2
    acc = pretrain(cfg)
    cfg = _config(tmp_path, tmp_path / "big", train={"micro_batch_size": 4, "steps": 3})
    big = pretrain(cfg)
    assert acc.losses == pytest.approx(big.losses, rel=1e-6)


def test_activation_checkpointing_and_compile_keep_the_losses(tmp_path):
    base = _config(tmp_path, tmp_path / "plain", train={"steps": 2})
    plain = pretrain(base)
    ac = pretrain(_config(tmp_path, tmp_path / "ac", train={"steps": 2}, engine={"activation_checkpointing": True}))
    # aot_eager runs dynamo's capture and AOTAutograd's joint graph without the
    # C++ code generation of inductor (slow to build on 2 cores); see docs/training.md
    comp = pretrain(
        _config(tmp_path, tmp_path / "compiled", train={"steps": 2},
                engine={"compile": True, "compile_backend": "aot_eager", "activation_checkpointing": True})
    )
    assert ac.losses == pytest.approx(plain.losses, rel=1e-6)
    assert comp.losses == pytest.approx(plain.losses, rel=1e-5)


def test_bf16_autocast(tmp_path):
    cfg = _config(tmp_path, tmp_path / "bf16", data={"seq_len": 16}, train={"steps": 1, "batch_size": 2})
    fp32 = pretrain(cfg)
    cfg["train"]["output_dir"] = str(tmp_path / "bf16b")
    cfg["engine"] = {"precision": "bf16"}
    bf16 = pretrain(cfg)
    assert bf16.losses[0] != fp32.losses[0]  # autocast really ran in bfloat16
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=1e-2)
    assert next(bf16.model.parameters()).dtype == torch.float32  # master weights stay float32


def test_checkpoint_and_final_model_load_with_from_pretrained(tmp_path, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = AutoModelForCausalLM.from_pretrained(reference.final_dir)
    AutoTokenizer.from_pretrained(reference.final_dir)
    x = torch.randint(0, 1000, (1, 12))
    with torch.no_grad():
        assert torch.equal(final(x).logits, reference.model.eval()(x).logits)
    cfg = _config(tmp_path, tmp_path / "ck", train={"steps": 2, "save_every": 1, "keep_checkpoints": 1})
    pretrain(cfg)
    (ck,) = list_checkpoints(tmp_path / "ck")  # only the newest is kept
    assert ck.name == "step_00000002"
    assert {"config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt",
            "trainer_state.json", "tokenizer.json"} <= {p.name for p in ck.iterdir()}
    AutoModelForCausalLM.from_pretrained(ck)


def test_refuses_to_overwrite_or_resume_from_other_data(tmp_path):
    cfg = _config(tmp_path, tmp_path / "run", train={"steps": 2, "save_every": 2})
    pretrain(cfg)
    with pytest.raises(ValueError, match="train.output_dir.*--resume"):
        pretrain(cfg)
    cfg["train"].update(resume=True, steps=3, batch_size=2)
    with pytest.raises(ValueError, match="train.batch_size differs"):
        pretrain(cfg)


def test_curriculum_and_packed_mode(tmp_path):
    cfg = _config(
        tmp_path, tmp_path / "cur",
        data={"seq_len": 32, "packing": "packed", "curriculum": [{"steps": 2, "seq_len": 16}]},
        train={"steps": 4, "save_every": 2},
    )
    full = pretrain(cfg)
    seq_lens = [json.loads(line)["seq_len"] for line in (tmp_path / "cur" / "metrics.jsonl").read_text().splitlines()]
    assert seq_lens == [16, 16, 32, 32]
    # resuming at the stage boundary continues exactly
    cfg["train"].update(output_dir=str(tmp_path / "cur2"), resume=str(tmp_path / "cur" / "checkpoints" / "step_00000002"))
    rest = pretrain(cfg)
    assert rest.losses == full.losses[2:]


def test_tensorboard_scalars_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = pretrain(_config(tmp_path, tmp_path / "tb", train={"steps": 2}))
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(result.losses)
