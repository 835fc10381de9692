"""The conversion skeleton both converters share: field namespaces and the command line (the resolution of settings
and the atomic output are tested through each converter, in test_convert_unicl.py and test_convert_msclip.py)."""

from __future__ import annotations

import pytest

from hf_unified.conversion import msclip, unicl
from hf_unified.conversion.converter import flatten, unflatten


def test_flatten_and_unflatten_are_inverse():
    nested = {"vision_config": {"embed_dim": 96, "depths": [2, 2]}, "projection_dim": 512}
    assert flatten(nested) == {"vision_config.embed_dim": 96, "vision_config.depths": [2, 2], "projection_dim": 512}
    assert unflatten(flatten(nested)) == nested


def test_help_lists_the_flags_with_their_config_fields():
    text = " ".join(unicl.CONVERTER.build_parser().format_help().split())
    assert "--overwrite" in text and "--text-heads" in text and "text_config.num_attention_heads" in text
    text = " ".join(msclip.CONVERTER.build_parser().format_help().split())
    assert "--stem-strides" in text and "config field stem_strides" in text


def test_unknown_keyword_is_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="text_head"):
        unicl.convert_unicl_checkpoint(tmp_path / "x.pth", tmp_path / "out", text_head=2)


def test_missing_checkpoint_is_one_error_line(tmp_path, capsys):
    assert msclip.main(["--checkpoint", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint file not found") and len(err.strip().splitlines()) == 1
