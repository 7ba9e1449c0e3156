import os

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (``-n N``) each worker is a process of its own: N workers share the cores, so each
# computes on its share of them instead of every worker starting a thread per core.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skipped where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu); torch.cuda.is_available() is False here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """Run a test on one thread (``pytestmark = pytest.mark.usefixtures("one_thread")``). Tiny models
    gain nothing from threads, and on a busy shared 2-core machine every multi-threaded kernel call waits
    for a second thread (measured: a 300-token SmolLM2 forward took 7.3 s on two threads, 1.6 s on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_dir():
    """Directory of the embedded SmolLM2-135M (float32 safetensors, built once)."""
    from zebra_llm.loading import smollm2_dir

    return smollm2_dir()


@pytest.fixture
def load_smollm2(smollm2_dir):
    """Loads a fresh copy of the embedded SmolLM2 (under a second once cached)."""
    from zebra_llm.loading import load_model

    def load(**kwargs):
        return load_model("smollm2", **kwargs)

    return load


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir, tmp_path_factory):
    """A tiny random Llama (2 layers, trained context 64) with the SmolLM2 tokenizer, on disk."""
    from eval_helpers import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model", smollm2_dir)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """Three text files of about 400, 800 and 1200 words."""
    from eval_helpers import write_corpus

    return write_corpus(tmp_path_factory.mktemp("corpus") / "texts")
