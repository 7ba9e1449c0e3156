"""Integer config fields take integers only (issue 25, item 4): ``1e9`` or ``4.0`` in a size field is refused
by name instead of rounded to an integer."""

from __future__ import annotations

import pytest

from zebra_llm.config_io import ConfigError
from zebra_llm.train import PretrainConfig


@pytest.mark.parametrize("value", ["1e9", "1E3", "4.0", "12abc", "inf", "true"])
def test_integer_fields_refuse_other_notations(value):
    with pytest.raises(ConfigError, match=r"^data.seq_len must be an integer \(digits only, no exponent or decimal"):
        PretrainConfig.load(None, [f"data.seq_len={value}"])


def test_integer_fields_take_digits_and_exact_integers():
    assert PretrainConfig.load(None, ["data.seq_len=4096"]).data.seq_len == 4096
    assert PretrainConfig.from_dict({"data": {"seq_len": "+2048"}}).data.seq_len == 2048
    assert PretrainConfig.from_dict({"train": {"steps": 2**60 + 1}}).train.steps == 2**60 + 1  # exact past 2**53
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        PretrainConfig.from_dict({"train": {"steps": 4.0}})
    with pytest.raises(ConfigError, match="train.steps must be an integer"):
        PretrainConfig.from_dict({"train": {"steps": True}})
