"""Bounded inputs (`hf_unified.image_processing`): one conversion to RGB that keeps what each image mode means, on
every route; image sizes refused from the header before anything is decoded or resized; and the payloads that would
cost gigabytes (a 1 x 1,000,000 PNG of under 3 KB, decompression bombs) through training, evaluation, the model
card's example images and the zero-shot pipeline under an address-space cap, so that without the limits they fail
at once instead of taking the machine's memory. (The Endpoint handler and the Space: `test_endpoint.py`,
`test_space.py`; damaged shards and captions: `test_data_damage.py`.)"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hostile_inputs import (
    CAP_ADDRESS_SPACE,
    grey16_png,
    png_bytes,
    png_header,
    shapes_png,
    thin_png,
    ztxt_bomb_png,
)
from PIL import Image
from test_hub_models import save_tiny_unicl

from hf_unified.image_processing import (
    DualEncoderImageProcessor,
    ImageTooLarge,
    UnreadableImage,
    center_crop_image_processor,
    check_image_size,
    load_image,
    to_rgb,
)
from hf_unified.training import data as data_lib
from hf_unified.training.data.augmentation import MultiViewAugmentation
from hf_unified.training.data.batch_augmentation import ImageCanvas

GREY_46 = (117, 117, 117)  # 46% of 255: what a 16-bit 30,146 / 65,535 means


def test_one_conversion_keeps_what_each_mode_means():
    png16 = grey16_png(0.46)
    assert Image.open(io.BytesIO(png16)).mode == "I;16"
    assert Image.open(io.BytesIO(png16)).convert("RGB").getpixel((0, 0)) == (255, 255, 255)  # PIL's clipping
    assert load_image(png16).getpixel((0, 0)) == GREY_46
    samples = np.full((4, 4), round(0.46 * 65535), np.uint16)
    for mode, raw in (("I;16B", samples.astype(">u2").tobytes()), ("I;16L", samples.astype("<u2").tobytes())):
        assert to_rgb(Image.frombytes(mode, (4, 4), raw)).getpixel((0, 0)) == GREY_46, mode
    assert to_rgb(Image.fromarray(samples.astype(np.int32))).getpixel((0, 0)) == GREY_46  # mode "I"
    assert to_rgb(Image.fromarray(np.full((4, 4), 0.46, np.float32))).getpixel((0, 0)) == GREY_46  # mode "F"

    palette = Image.new("P", (4, 4))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putpixel((0, 0), 1)
    decoded = load_image(png_bytes(palette, transparency=0))  # palette entry 0 (red) is transparent
    assert decoded.getpixel((0, 0)) == (0, 0, 255) and decoded.getpixel((1, 1)) == (255, 255, 255)
    assert to_rgb(Image.new("LA", (4, 4), (0, 128))).getpixel((0, 0)) == (127, 127, 127)  # half black over white
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("RGBA", (4, 4), (255, 0, 0, 255))).getpixel((0, 0)) == (255, 0, 0)
    for premultiplied in ("La", "RGBa"):
        assert to_rgb(Image.new(premultiplied, (4, 4))).mode == "RGB"
    cmyk = io.BytesIO()
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    red, green, blue = load_image(cmyk.getvalue()).getpixel((4, 4))
    assert red > 220 and green < 40 and blue < 40
    assert to_rgb(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    assert to_rgb(rgb) is rgb

    # Every route's conversion is this one: the streams' decoding, the processor, both augmentations.
    assert data_lib.decode_image({"bytes": png16, "path": None}).getpixel((0, 0)) == GREY_46
    image16 = Image.open(io.BytesIO(png16))
    processor = center_crop_image_processor(8, 8, image_mean=[0.0] * 3, image_std=[1.0] * 3)
    pixels = processor(images=image16, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, torch.full_like(pixels, 117 / 255))
    tensor = MultiViewAugmentation.to_image_tensor(Image.open(io.BytesIO(png16)))
    torch.testing.assert_close(tensor, torch.full_like(tensor, 117 / 255))
    canvas = ImageCanvas(16)(Image.open(io.BytesIO(png16)))["images"]
    assert canvas[:, 0, 0].tolist() == list(GREY_46)


def test_sizes_are_refused_from_the_header_before_decoding(tmp_path):
    with pytest.raises(
        ImageTooLarge, match=r"1000000 x 1, an aspect ratio of 1,000,000:1, more than max_aspect_ratio"
    ):
        load_image(thin_png())
    # The declared data of these would not even decode: they are refused from their header.
    with pytest.raises(ImageTooLarge, match=r"144,000,000 pixels, more than max_image_pixels=64,000,000"):
        load_image(png_header(12_000, 12_000))
    with pytest.raises(ImageTooLarge, match="larger than PIL accepts .*decompression bomb"):
        load_image(png_header(20_000, 10_000))
    with pytest.raises(UnreadableImage, match="ValueError: Decompressed data too large"):
        load_image(ztxt_bomb_png())
    with pytest.raises(UnreadableImage, match="UnidentifiedImageError"):
        load_image(b"GIF89a, but not really")
    with pytest.raises(UnreadableImage, match="broken data stream|truncated"):
        load_image(png_header(40, 30))

    # The limits are settings, with their defaults at the edge.
    check_image_size(8_000, 8_000)
    check_image_size(200, 10)
    with pytest.raises(ImageTooLarge, match="21:1"):
        load_image(thin_png(210, 10))
    assert load_image(thin_png(210, 10), max_aspect_ratio=25).size == (210, 10)
    with pytest.raises(ImageTooLarge, match="more than max_image_pixels=1,000"):
        load_image(shapes_png(), max_pixels=1_000)

    # The pipeline's image processor refuses before resizing, also arrays and tensors, and saves its limits.
    processor = center_crop_image_processor(32, 36, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    for thin in (Image.new("L", (400, 1)), np.zeros((2, 800, 3), np.uint8), torch.zeros(3, 400, 1, dtype=torch.uint8)):
        with pytest.raises(ImageTooLarge, match="400:1"):
            processor(images=thin, return_tensors="pt")
    processor.max_aspect_ratio = 500.0
    processor.save_pretrained(tmp_path)
    loaded = DualEncoderImageProcessor.from_pretrained(tmp_path)
    assert loaded.max_aspect_ratio == 500.0 and loaded.max_image_pixels == 64_000_000
    assert loaded(images=Image.new("L", (400, 1)), return_tensors="pt")["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="max_aspect_ratio must be a number >= 1, got 0.5"):
        DualEncoderImageProcessor(max_aspect_ratio=0.5)


def _member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.mark.skipif(not Path("/proc/self/statm").is_file(), reason="the address-space cap reads /proc (Linux)")
def test_thin_images_and_bombs_cost_no_run_under_an_address_space_cap(tmp_path, tiny_clip_tokenizer):
    """Training, evaluation, the card's example images and the pipeline, in one process whose address space may
    grow by 2 GiB: without the limits the 1 x 1,000,000 PNG's resize to a 224 (or 36) px short side fails there at
    once, and the bombs and the bad label end evaluation or the final save."""
    folder = tmp_path / "model"
    save_tiny_unicl(folder, tiny_clip_tokenizer)
    (tmp_path / "classes.json").write_text(json.dumps(["circle", "square", "triangle"]))
    samples = [
        (shapes_png((200, 30, 30)), b"0"),
        (thin_png(), b"1"),  # oversized_image: aspect ratio
        (png_header(12_000, 12_000), b"1"),  # oversized_image: 144 megapixels (PIL would only warn)
        (png_header(20_000, 10_000), b"2"),  # oversized_image: PIL's decompression bomb
        (shapes_png((30, 200, 30)), b"three"),  # bad_label: the card once did int(None) on it
        (grey16_png(0.46), b"1"),
        (shapes_png((30, 30, 200)), b"2"),
    ]
    with tarfile.open(tmp_path / "eval-00000.tar", "w") as tar:
        for index, (image, label) in enumerate(samples):
            _member(tar, f"s{index}.png", image)
            _member(tar, f"s{index}.cls", label)

    code = CAP_ADDRESS_SPACE + textwrap.dedent(
        f"""
        import io, json
        from pathlib import Path
        import torch
        from PIL import Image
        from torchvision.transforms import v2
        from transformers import pipeline
        from hf_unified.training.outputs.model_folder import CardExamples
        from hf_unified.training import data as data_lib

        folder, shards, classes = {str(folder)!r}, {str(tmp_path / "eval-*.tar")!r}, {str(tmp_path / "classes.json")!r}
        classifier = pipeline("zero-shot-image-classification", model=folder)
        thin = Image.open(io.BytesIO({thin_png()!r}))
        cap_address_space(2)

        # What training and evaluation run when they resize before cropping.
        resize = v2.Compose([v2.ToImage(), v2.Resize(224), v2.CenterCrop(224), v2.ToDtype(torch.float32, scale=True)])
        spec = data_lib.SourceSpec(shards, image_column="png", text_column=None, label_column="cls")
        decode = data_lib.DecodeConfig(data_lib.ImageFields(resize), class_names=data_lib.load_class_names(classes))
        stream = data_lib.build_stream([spec], seed=0, rank=0, world_size=1, shuffle_buffer_size=0)
        train = data_lib.TrainStream(stream, decode, classifier.tokenizer, 16, batch_size=7, seed=0, rank=0)
        batch = next(iter(train))
        results = {{"training": [batch["skipped"], len(batch["texts"]), list(batch["pixel_values"].shape)]}}
        loader = data_lib.eval_dataloader(spec, decode, classifier.tokenizer, 16, 4, 0, 1)
        used = sum(len(batch.get("texts", [])) for batch in loader)
        results["evaluation"] = [dict(loader.health.skipped), used]

        split = CardExamples(shards, data_lib.load_class_names(classes), image_column="png", label_column="cls")
        examples = split.widget_examples(Path(folder))
        results["card"] = [[example.title, example.output is not None] for example in examples]

        try:
            classifier(thin, candidate_labels=["a", "b"])
        except ValueError as error:
            results["pipeline_thin"] = f"{{type(error).__name__}}: {{error}}"
        results["pipeline_good"] = len(classifier(Image.new("RGB", (40, 30)), candidate_labels=["a", "b"]))
        print("RESULT" + json.dumps(results))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]
    results = json.loads(result.stdout.split("RESULT", 1)[1])
    expected_skips = {"oversized_image": 3, "bad_label": 1}
    assert results["training"] == [expected_skips, 3, [3, 3, 224, 224]]
    assert results["evaluation"] == [expected_skips, 3]
    assert results["card"] == [["circle (evaluation split)", True], ["square (evaluation split)", True]]
    assert results["pipeline_thin"].startswith(
        "ImageTooLarge: the image is 1000000 x 1, an aspect ratio of 1,000,000:1"
    )
    assert results["pipeline_good"] == 2
