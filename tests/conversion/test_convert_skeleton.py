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


@pytest.mark.parametrize("where", ["the checkpoint's folder", "a folder around it", "the tokenizer folder"])
def test_overwrite_never_replaces_a_folder_holding_what_the_conversion_reads(tmp_path, capsys, where):
    """`--output` at the folder of the official checkpoint with `--overwrite` replaced it: the checkpoint (and the
    tokenizer, the `--config` JSON) deleted. Refused in one line before anything is read or written."""
    downloads = tmp_path / "downloads"
    (downloads / "tokenizer").mkdir(parents=True)
    checkpoint = downloads / "model.pth"
    checkpoint.write_bytes(b"the official weights")
    (downloads / "tokenizer" / "vocab.json").write_text("{}")
    output = {
        "the checkpoint's folder": downloads,
        "a folder around it": tmp_path,
        "the tokenizer folder": downloads / "tokenizer",
    }[where]
    argv = ["--checkpoint", str(checkpoint), "--output", str(output), "--overwrite"]
    assert unicl.main([*argv, "--tokenizer", str(downloads / "tokenizer")]) == 1
    read = downloads / "tokenizer" if where == "the tokenizer folder" else checkpoint
    assert capsys.readouterr().err == (
        f"error: --output {output} holds {read}, which this conversion reads: writing the model there would delete "
        "it, even with --overwrite; choose another folder\n"
    )
    assert checkpoint.read_bytes() == b"the official weights" and (downloads / "tokenizer" / "vocab.json").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["downloads"]  # no staging folder either
