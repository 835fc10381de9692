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
from PIL import Image
from training_helpers import log_records, train_script, write_config

pytest_plugins = ("training_fixtures",)  # fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

CLASSES = ["circle", "square", "triangle"]
# (width, height, caption, label): in this order, so that the card's first example of class 0 and of class 1 would be
# the over-limit images if its reading ignored the run's limits.
SAMPLES = [
    (64, 16, "a wide green shape.", 0),  # aspect ratio 4: over --max_aspect_ratio 2
    (64, 64, "a large blue shape.", 1),  # 4,096 pixels: over --max_image_pixels 2000
    (32, 32, "a red circle.", 0),
    (32, 32, "a blue square.", 1),
    (32, 32, "a green triangle, " + "described at length, " * 6, 2),  # 146 characters: over --max_caption_chars 100
    (32, 32, "a green triangle.", 2),
]
LIMITS = ["--max_image_pixels", "2000", "--max_aspect_ratio", "2", "--max_caption_chars", "100"]


def _png(width: int, height: int, label: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), ((200, 30, 30), (30, 30, 200), (30, 200, 30))[label]).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def limits_data(tmp_path_factory) -> Path:
    """One shard of the six `SAMPLES` (png, txt, cls) and its class names."""
    folder = tmp_path_factory.mktemp("limits")
    with tarfile.open(folder / "limits-00000.tar", "w") as tar:
        for index, (width, height, caption, label) in enumerate(SAMPLES):
            for extension, payload in (("png", _png(width, height, label)), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"s{index}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            info = tarfile.TarInfo(f"s{index}.cls")
            info.size = len(str(label))
            tar.addfile(info, io.BytesIO(str(label).encode()))
    (folder / "classes.json").write_text(json.dumps(CLASSES))
    return folder


def test_the_limits_given_to_train_py_bound_training_evaluation_the_card_and_the_saved_processor(
    tmp_path, limits_data
):
    """Under the defaults every sample of the shard is usable; with lower limits on the command line the stream, the
    evaluation and the card's examples skip the same three, and the saved processor refuses what they skipped."""
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

    # Training: the three over-limit samples of each pass skipped and counted by kind.
    assert log_records(out)[-1]["skipped"] == {"oversized_caption": 2, "oversized_image": 4}
    results = json.loads((out / "eval_results.json").read_text())
    assert results["train_data"]["skipped"] == {"oversized_caption": 2, "oversized_image": 4}
    # Evaluation: the same three, in one pass.
    assert (results["num_examples"], results["num_skipped"]) == (3, 3)
    # The card's examples: the first image of class 0 and of class 1 that the limits let through (32 x 32 both).
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
