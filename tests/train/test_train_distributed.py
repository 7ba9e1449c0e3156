"""Several processes (torchrun, gloo on CPU) give the loss curve of one process
with the same global batch: DDP, and FSDP2 sharding via fully_shard."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_helpers import losses_of, tiny_pretrain_config, write_tiny_llama_config

from zebra_llm.train import pretrain

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.subprocess]


def torchrun(config: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    src = str(Path(__import__("zebra_llm").__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "zebra_llm", "train", "pretrain", "-c", str(config), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    cfg = tiny_pretrain_config(write_tiny_llama_config(tmp), tmp / "single", train={"steps": 4, "batch_size": 4})
    single = pretrain(cfg)  # one process, micro-batch 4
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return tmp, path, single


def test_ddp_two_processes_match_one(setup):
    tmp, path, single = setup
    # 2 processes x 2 micro-batches of 1: gradient accumulation with DDP's no_sync on top
    torchrun(path, "-o", str(tmp / "ddp"), "--micro-batch-size", "1")
    assert losses_of(tmp / "ddp") == pytest.approx(single.losses, rel=1e-5)


def test_fsdp2_matches_and_its_checkpoint_resumes_anywhere(setup):
    tmp, path, single = setup
    torchrun(path, "-o", str(tmp / "fsdp"), "--strategy", "fsdp", "--save-every", "2")  # micro-batch 2 each
    assert losses_of(tmp / "fsdp") == pytest.approx(single.losses, rel=1e-5)
    a = load_file(tmp / "fsdp" / "final" / "model.safetensors")
    b = load_file(tmp / "single" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    # the FSDP checkpoint (optimizer state gathered by parameter name) resumes on one process
    cfg = yaml.safe_load(path.read_text())
    cfg["train"].update(output_dir=str(tmp / "resumed"), resume=str(tmp / "fsdp" / "checkpoints" / "step_00000002"))
    rest = pretrain(cfg)
    assert rest.start_step == 2
    assert rest.losses == pytest.approx(single.losses[2:], rel=1e-5)
