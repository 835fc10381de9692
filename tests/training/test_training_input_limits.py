"""train.py's input limits (`--max_image_pixels`, `--max_aspect_ratio`, `--max_caption_chars`) reach every route
that reads the run's data: the training stream, the tokenizer pre-pass, evaluation, the model card's example images,
and the saved processor (what a bare zero-shot pipeline on the folder runs). The limits themselves and their defaults:
`test_input_limits.py`; the options' parsing: `test_training_cli.py`."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from hostile_inputs import png_header
from huggingface_hub.repocard import metadata_load
from PIL import Image
from training_helpers import log_records, train_script, write_config

pytest_plugins = ("training_fixtures",)  # fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

CLASSES = ["circle", "square", "triangle"]


def _png(width: int, height: int, label: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), ((200, 30, 30), (30, 30, 200), (30, 200, 30))[label]).save(buffer, "PNG")
    return buffer.getvalue()


# (image, caption, label): in this order, so that the card's first example of class 0 and of class 1 would be an
# over-limit image if its reading ignored the run's limits, or the end of the final save if it ignored the damage
# that evaluation skips (the card once did int(None) on a bad label, and let PIL raise on a bomb).
SAMPLES = [
    (png_header(20_000, 10_000), "a bomb.", b"0"),  # over every limit, and PIL's decompression-bomb error
    (_png(32, 32, 1), "a blue square.", b"three"),  # bad_label
    (_png(64, 16, 0), "a wide green shape.", b"0"),  # aspect ratio 4: over --max_aspect_ratio 2
    (_png(64, 64, 1), "a large blue shape.", b"1"),  # 4,096 pixels: over --max_image_pixels 2000
    (_png(32, 32, 0), "a red circle.", b"0"),
    (_png(32, 32, 1), "a blue square.", b"1"),
    (_png(32, 32, 2), "a green triangle, " + "described at length, " * 6, b"2"),  # 144 characters: over 100
    (_png(32, 32, 2), "a green triangle.", b"2"),
]
LIMITS = ["--max_image_pixels", "2000", "--max_aspect_ratio", "2", "--max_caption_chars", "100"]


@pytest.fixture(scope="module")
def limits_data(tmp_path_factory) -> Path:
    """One shard of the `SAMPLES` (png, txt, cls) and its class names."""
    folder = tmp_path_factory.mktemp("limits")
    with tarfile.open(folder / "limits-00000.tar", "w") as tar:
        for index, (image, caption, label) in enumerate(SAMPLES):
            for extension, payload in (("png", image), ("txt", caption.encode()), ("cls", label)):
                info = tarfile.TarInfo(f"s{index}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return folder


def test_the_limits_given_to_train_py_bound_training_evaluation_the_card_and_the_saved_processor(
    tmp_path, limits_data
):
    """With lower limits on the command line the stream, the evaluation and the card's examples skip the same
    samples (under the defaults the wide and the large image and the long caption are used), the final save writes
    the card from the damaged evaluation split, and the saved processor refuses what they skipped."""
    from transformers import AutoProcessor

    import hf_unified  # noqa: F401  (registers the processors)
    from hf_unified.image_processing import ImageTooLarge

    shard = str(limits_data / "limits-00000.tar")
    config = write_config(
        tmp_path,
        limits_data,
        train_data=[shard],
        image_column=["png"],
        text_column=["txt"],
        label_column=["cls"],
        train_probabilities=None,
        eval_data=shard,
        eval_image_column="png",
        class_names_file=str(limits_data / "classes.json"),
        per_device_train_batch_size=len(SAMPLES),  # a batch is one pass over the shard
        embedded_data_dir=str(tmp_path / "no-embedded-data"),
    )
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--output_dir", str(out), "--max_steps", "2", *LIMITS])

    # Training: the five unusable samples of each pass skipped and counted by kind.
    skipped = {"bad_label": 2, "oversized_caption": 2, "oversized_image": 6}
    assert log_records(out)[-1]["skipped"] == skipped
    results = json.loads((out / "eval_results.json").read_text())
    assert results["train_data"]["skipped"] == skipped
    # Evaluation: the same five, in one pass.
    assert (results["num_examples"], results["num_skipped"]) == (3, 5)
    # The card, written by the final save: the first image of class 0 and of class 1 that evaluation would use.
    widget = metadata_load(out / "README.md")["widget"]
    assert [entry["example_title"] for entry in widget] == ["circle (evaluation split)", "square (evaluation split)"]
    for index in range(2):
        with Image.open(out / "widget" / f"eval-{index}.png") as image:
            assert image.size == (32, 32), index
    # The saved processor: the run's limits, also for a bare pipeline on the folder.
    image_processor = AutoProcessor.from_pretrained(out).image_processor
    assert (image_processor.max_image_pixels, image_processor.max_aspect_ratio) == (2000, 2.0)
    with pytest.raises(ImageTooLarge, match="an aspect ratio of 4:1, more than max_aspect_ratio=2"):
        image_processor(images=Image.new("RGB", (64, 16)), return_tensors="pt")
    with pytest.raises(ImageTooLarge, match="4,096 pixels, more than max_image_pixels=2,000"):
        image_processor(images=Image.new("RGB", (64, 64)), return_tensors="pt")
    arguments = json.loads((out / "training_args.json").read_text())
    assert (arguments["max_image_pixels"], arguments["max_aspect_ratio"], arguments["max_caption_chars"]) == (
        2000,
        2.0,
        100,
    )
