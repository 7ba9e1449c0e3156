"""lm-evaluation-harness: ``--model zebra`` on a tiny local task, offline."""

import json

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

ROWS = [
    {"context": "The grass is", "continuation": " green"},
    {"context": "The sky is", "continuation": " blue"},
    {"context": "One, two,", "continuation": " three four"},
]


@pytest.fixture
def tiny_task(tmp_path):
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tmp_path / "tiny.yaml").write_text(
        "task: zebra_tiny\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{continuation}}"\n'
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n"
    )
    return tmp_path


def _our_loglikelihoods(model_dir, method):
    from zebra_llm.eval import load_with_method, token_nll

    loaded = load_with_method(str(model_dir), method)
    tok = loaded.tokenizer
    out = []
    for r in ROWS:
        ctx = tok(r["context"], add_special_tokens=False).input_ids
        cont = tok(r["continuation"], add_special_tokens=False).input_ids
        nll = token_nll(loaded.model, torch.tensor([ctx + cont]), score_from=len(ctx))
        out.append(-nll.double().sum().item())
    return out


def test_zebra_model_in_lm_eval_matches_our_loglikelihoods(tiny_model_dir, tiny_task):
    from lm_eval.tasks import TaskManager

    import zebra_llm.eval.lm_eval  # noqa: F401  registers --model zebra

    got = {}
    for method in ("none", "linear:factor=2"):
        results = lm_eval.simple_evaluate(
            model="zebra",
            model_args={"pretrained": str(tiny_model_dir), "method": method},
            tasks=["zebra_tiny"],
            task_manager=TaskManager(include_path=str(tiny_task), include_defaults=False),  # not its 12 s index
            device="cpu",
            log_samples=True,
        )
        samples = sorted(results["samples"]["zebra_tiny"], key=lambda s: s["doc_id"])
        got[method] = [s["resps"][0][0][0] for s in samples]
        assert got[method] == pytest.approx(_our_loglikelihoods(tiny_model_dir, method), rel=1e-4, abs=1e-3)
        assert "perplexity,none" in results["results"]["zebra_tiny"]
    assert got["none"] != pytest.approx(got["linear:factor=2"], rel=1e-4)  # the method was applied


def test_zebra_lm_eval_cli(tiny_model_dir, tiny_task, tmp_path, capsys):
    from zebra_llm.cli import app
    from zebra_llm.cli._common import run_guarded

    code = run_guarded(app, ["lm-eval", "run", "--model", "zebra", "--model_args",
                             f"pretrained={tiny_model_dir},method=yarn:factor=2;beta_fast=16",
                             "--tasks", "zebra_tiny", "--include_path", str(tiny_task), "--device", "cpu",
                             "--output_path", str(tmp_path / "lm")])
    out = capsys.readouterr().out
    assert code == 0
    assert "zebra_tiny" in out and "'method': 'yarn:factor=2;beta_fast=16'" in out
    assert list((tmp_path / "lm").rglob("results_*.json"))
