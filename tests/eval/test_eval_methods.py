import pytest
import torch

from zebra_llm.eval import MethodSpec, load_with_method, parse_methods
from zebra_llm.eval.methods import trained_context

from eval_helpers import TINY_CONTEXT, tiny_llama


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("none", "none"),
        ("dca", "dca"),
        ("DCA:chunk_size=6144", "dca:chunk_size=6144"),
        ("yarn:factor=4", "yarn:factor=4"),
        ("yarn: factor = 4.0 ", "yarn:factor=4"),
        ("dynamic:factor=4", "dynamic:factor=4"),
        ("linear:factor=2.5", "linear:factor=2.5"),
        ("zebra:window=512,layer_group_size=4", "zebra:layer_group_size=4,window=512"),
        ("dca:temperature=false,chunk_size=48", "dca:chunk_size=48,temperature=false"),
        ("none:max_length=65536", "none:max_length=65536"),
    ],
)
def test_spec_parse_and_canonical_round_trip(text, canonical):
    spec = MethodSpec.parse(text)
    assert str(spec) == canonical
    assert MethodSpec.parse(str(spec)) == spec


def test_spec_typed_options():
    s = MethodSpec.parse("yarn:factor=4,beta_fast=16")
    assert s.options.factor == 4.0 and s.options.beta_fast == 16.0 and s.options.beta_slow is None
    d = MethodSpec.parse("dca:chunk_size=48,pretraining_length=64,temperature=false").options
    assert (d.chunk_size, d.pretraining_length, d.temperature) == (48, 64, False)
    z = MethodSpec.parse("zebra:layer_group_size=4,window=512").options
    assert (z.attention, z.layer_group_size, z.window) == ("group", 4, 512)


@pytest.mark.parametrize(
    "text, message",
    [
        ("foo", "unknown method 'foo'; known methods are none, linear, dynamic, yarn, dca, self_extend, rerope, string, sinks, zebra"),
        ("yarn", "factor is required"),
        ("yarn:factr=4", "unknown option 'factr'; allowed options are factor"),
        ("linear:factor=0.5", "factor must be >= 1"),
        ("dynamic:factor=inf", "factor must be a finite number"),  # the wording of the shared config engine
        ("dca:chunk_size=abc", "chunk_size must be an integer"),
        ("dca:chunk_size=1.5", "chunk_size must be an integer"),
        ("dca:chunk_size=0", "chunk_size must be >= 1"),
        ("dca:chunk_size=64,pretraining_length=64", "must be smaller than pretraining_length"),
        ("zebra:attention=sparse", "attention must be one of group, global, local, global_approx"),
        ("zebra:window=0", "window must be an integer >= 1"),
        ("none:max_length=1", "max_length must be >= 2"),
        ("none:factor=2", "unknown option 'factor'"),
        ("yarn:factor", "expected key=value"),
        ("yarn:factor=2,factor=3", "given twice"),
    ],
)
def test_spec_errors(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        MethodSpec.parse(text)


def test_parse_methods_rejects_duplicates_and_empty():
    assert [str(m) for m in parse_methods(["none", "yarn:factor=2"])] == ["none", "yarn:factor=2"]
    with pytest.raises(ValueError, match="given twice"):
        parse_methods(["yarn:factor=2", "yarn:factor=2.0"])
    with pytest.raises(ValueError, match="at least one"):
        parse_methods([])


def test_length_limits():
    model = tiny_llama(100)
    c = TINY_CONTEXT
    assert trained_context(model.config) == c
    assert MethodSpec.parse("none").max_length(model.config) == 4 * c
    assert MethodSpec.parse("linear:factor=2").max_length(model.config) == 8 * c
    assert MethodSpec.parse("yarn:factor=4").max_length(model.config) == 16 * c
    assert MethodSpec.parse("dca").max_length(model.config) is None
    assert MethodSpec.parse("none:max_length=1000").max_length(model.config) == 1000
    MethodSpec.parse("none").check_length(model.config, 4 * c)
    with pytest.raises(ValueError, match=r"length 257 is above what method none supports on this model \(256 tokens"):
        MethodSpec.parse("none").check_length(model.config, 4 * c + 1)


def _logits(model, n, seed=0):
    ids = torch.randint(0, model.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def _apply(spec, seed=0):
    model = tiny_llama(100, seed=seed)
    return load_with_method((model, None), spec)


def test_rope_scaling_changes_logits_and_factor_one_is_identity():
    n = 3 * TINY_CONTEXT  # past the trained context: every scaling is active
    base = _logits(tiny_llama(100), n)
    for name in ("linear", "dynamic", "yarn"):
        scaled = _apply(f"{name}:factor=2")
        assert scaled.model.config.rope_parameters["rope_type"] == name
        assert scaled.model.config.rope_parameters["factor"] == 2.0
        out = _logits(scaled.model, n)
        assert (out - base).abs().max() > 1e-2, name
    # factor 1 leaves linear and yarn exactly unchanged at any length
    for name in ("linear", "yarn"):
        same = _logits(_apply(f"{name}:factor=1").model, n)
        torch.testing.assert_close(same, base, rtol=0, atol=1e-5)
    # dynamic NTK is the identity up to the trained context and changes only past it
    dyn = _apply("dynamic:factor=4").model
    torch.testing.assert_close(_logits(dyn, TINY_CONTEXT), _logits(tiny_llama(100), TINY_CONTEXT), rtol=0, atol=1e-5)


def test_linear_scaling_matches_interpolated_positions():
    """Position interpolation with factor f equals the plain model fed positions p / f."""
    n = 2 * TINY_CONTEXT
    ids = torch.randint(0, 100, (1, n), generator=torch.Generator().manual_seed(3))
    plain = tiny_llama(100)
    scaled = _apply("linear:factor=2").model
    with torch.no_grad():
        ref = plain(ids, position_ids=(torch.arange(n) / 2.0)[None]).logits
        out = scaled(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_yarn_records_original_length_and_max_positions():
    loaded = _apply("yarn:factor=4")
    rope = loaded.model.config.rope_parameters
    assert rope["original_max_position_embeddings"] == TINY_CONTEXT
    assert loaded.model.config.max_position_embeddings == 4 * TINY_CONTEXT
    assert loaded.info["trained_context"] == TINY_CONTEXT and loaded.max_length == 16 * TINY_CONTEXT
    dyn = _apply("dynamic:factor=4")
    assert dyn.model.config.max_position_embeddings == TINY_CONTEXT  # dynamic scales relative to it


def test_rope_scaling_refuses_stacking():
    loaded = _apply("yarn:factor=2")
    with pytest.raises(ValueError, match="already uses rope_type 'yarn'"):
        MethodSpec.parse("linear:factor=2").apply(loaded.model)


def test_loaded_model_checks_length():
    loaded = _apply("linear:factor=2")
    loaded.check_length(8 * TINY_CONTEXT)
    with pytest.raises(ValueError, match="above what method linear:factor=2 supports"):
        loaded.check_length(8 * TINY_CONTEXT + 1)


def test_check_plan_refuses_before_work(tiny_model_dir):
    from zebra_llm.eval.method_spec import check_plan

    check_plan(str(tiny_model_dir), ["none", "yarn:factor=2"], [200, 256])
    with pytest.raises(ValueError, match="length 300 is above what method none supports"):
        check_plan(str(tiny_model_dir), ["yarn:factor=2", "none"], [300])
    check_plan(str(tiny_model_dir), ["none"], [300], exempt=("none",))


def test_check_plan_rejects_a_setting_the_library_would_before_loading():
    from zebra_llm.eval.method_spec import check_plan

    model = tiny_llama(100)  # check_plan reads only the config of a (model, tokenizer) pair
    with pytest.raises(ValueError, match="method dca: chunk_size must be smaller than pretraining_length"):
        check_plan((model, None), ["dca:chunk_size=64"], [32])
    with pytest.raises(ValueError, match="method self_extend"):
        check_plan((model, None), ["self_extend:group_size=4,neighbor_window=64"], [32])
    check_plan((model, None), ["dca:chunk_size=48", "self_extend:group_size=4,neighbor_window=16"], [32])
