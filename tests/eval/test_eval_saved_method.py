"""A model saved with an extension method applied (issue 25, item 2): a spec of that method runs the saved
settings and its label and results say so; a spec that contradicts them is refused unless it says
override_saved=true."""

from __future__ import annotations

import pytest
import torch

from zebra_llm import apply_dca, apply_extension
from zebra_llm.eval import MethodSpec, PerplexityConfig, load_with_method, run_perplexity
from zebra_llm.eval.method_spec import check_plan
from zebra_llm.extensions import extension_config


def _saved(tmp_path, smollm2_dir, name, apply):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_helpers import save_tiny_model

    target = save_tiny_model(tmp_path / name, smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(target)
    apply(model)
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(target)  # the tokenizer stays beside it
    return target


@pytest.fixture(scope="module")
def saved_models(smollm2_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    return {
        "dca": _saved(root, smollm2_dir, "dca", lambda m: apply_dca(m, chunk_size=40)),  # c = 64: default 48
        "rerope": _saved(root, smollm2_dir, "rerope", lambda m: apply_extension(m, "rerope", window=5)),
    }


def test_results_of_a_saved_method_name_its_settings(saved_models, tiny_corpus):
    data = run_perplexity(PerplexityConfig(model=str(saved_models["dca"]), data=str(tiny_corpus), lengths=[100],
                                           methods=["dca"]), progress=False)
    (row,) = data["summary"]
    assert row["method"] == "dca:chunk_size=40"  # was "dca": the saved settings ran under the default label
    assert {i["method"] for i in data["items"]} == {"dca:chunk_size=40"}
    model = data["models"]["dca:chunk_size=40"]
    assert model["settings"] == {"method": "dca", "pretraining_length": 64, "chunk_size": 40, "temperature": False,
                                 "temperature_length": 64}
    # the label is a spec that runs the same settings (on this model, consistent with what it saved)
    assert str(MethodSpec.parse(row["method"])) == row["method"]
    loaded = load_with_method(str(saved_models["rerope"]), "rerope")
    assert str(loaded.method) == "rerope:window=5" and extension_config(loaded.model)[1].window == 5


@pytest.mark.parametrize("spec, message", [
    ("rerope", "the model was saved with method dca"),
    ("none", "the model was saved with method dca"),
    ("dca:chunk_size=30", "this spec runs other settings"),
    ("dca:preset=chunkllama", "this spec runs other settings"),
])
def test_a_spec_contradicting_the_saved_method_is_refused(saved_models, spec, message):
    with pytest.raises(ValueError, match=message):
        check_plan(str(saved_models["dca"]), [spec], [100])  # before any weight is read
    with pytest.raises(ValueError, match=message):
        load_with_method(str(saved_models["dca"]), spec)


def test_override_saved_runs_the_spec_as_written(saved_models):
    assert str(check_plan(str(saved_models["dca"]), ["dca:chunk_size=40"], [100])[0]) == "dca:chunk_size=40"
    loaded = load_with_method(str(saved_models["dca"]), "dca:chunk_size=30,override_saved=true")
    assert extension_config(loaded.model)[1].chunk_size == 30
    loaded = load_with_method(str(saved_models["dca"]), "dca:override_saved=true")
    assert extension_config(loaded.model)[1].chunk_size == 48  # the default for c = 64, not the saved 40
    loaded = load_with_method(str(saved_models["dca"]), "rerope:override_saved=true")
    assert extension_config(loaded.model)[0] == "rerope"
    plain = load_with_method(str(saved_models["dca"]), "none:override_saved=true")
    ids = torch.randint(0, 100, (1, 20))
    assert plain.model.config._attn_implementation != "zebra_extension" and plain.model(ids).logits.shape[1] == 20
