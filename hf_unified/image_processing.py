"""The image side of every route: bounded decoding, the one conversion to RGB, and the processors the methods share.

Every place where an image enters hf-unified (the training and evaluation streams, the model card's example images,
the zero-shot pipeline through `DualEncoderImageProcessor`, the Inference Endpoints handler and the demo Space) goes
through the same three steps, defined here once:

1. `check_image_size`: the size the image *declares* (its header, read by `PIL.Image.open` without decoding) is
   held against `max_image_pixels` and `max_aspect_ratio` before anything is decoded or resized. A 140-byte
   1 x 20,000 PNG is cheap to decode, but resizing its short side to 224 px makes a 224 x 4,480,000 image (gigabytes);
   a 400-megapixel PNG is a few kilobytes and decodes to 1.2 GB.
2. `load_image`: encoded bytes or a file -> a fully decoded image, every failure one `UnreadableImage` or
   `ImageTooLarge` (both `ValueError`) naming what was wrong, never a library's own exception type.
3. `to_rgb`: any PIL mode -> 8-bit RGB with the intensities it means: 16-bit greyscale scaled (not clipped: PIL's
   `convert("RGB")` turns a 46% grey `I;16` image white), alpha composited on a fixed white background (as
   transformers' `convert_to_rgb` does), palette transparency honoured, CMYK, 1-bit and float images converted.

The methods' evaluation preprocessing differs only in numbers (resize margin, mean/std): each processor states those
through its `default_image_processor`, built by `center_crop_image_processor`.

This file is Hub custom code (copied next to the model by `save_pretrained`, and into the demo Space), so it imports
only transformers, numpy and Pillow.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image
from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.image_utils import ChannelDimension, PILImageResampling, get_image_size
from transformers.processing_utils import ImagesKwargs

# Default limits. 64 megapixels holds every camera photo (a 61 MP full-frame sensor) and decodes to at most 192 MB
# of RGB; PIL's own guard warns at 89 MP and refuses only at 179 MP. A 20:1 aspect ratio holds banners and stitched
# panoramas; a 224 px centre crop of anything thinner sees under 5% of it.
MAX_IMAGE_PIXELS = 64_000_000
MAX_ASPECT_RATIO = 20.0
# Where an image is transparent it shows this colour (transformers' `convert_to_rgb` composites on white too).
ALPHA_BACKGROUND = (255, 255, 255)
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class UnreadableImage(ValueError):
    """The bytes are not an image PIL can decode (truncated, corrupt, not an image, an unsupported mode)."""


class ImageTooLarge(ValueError):
    """The image declares more pixels than `max_image_pixels`, or is thinner than `max_aspect_ratio` allows."""


def check_image_size(
    width: int, height: int, max_pixels: int = MAX_IMAGE_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO
) -> None:
    """Refuses a `width` x `height` image before it is decoded or resized.

    Args:
        max_pixels: most pixels (`width * height`) accepted; default `MAX_IMAGE_PIXELS` (64,000,000).
        max_aspect_ratio: largest `long side / short side` accepted; default `MAX_ASPECT_RATIO` (20).

    Raises:
        ImageTooLarge: naming the size, the limit it passes and the setting that raises it.
    """
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width} x {height} = {width * height:,} pixels, more than max_image_pixels={max_pixels:,}"
        )
    if min(width, height) < 1 or max(width, height) / min(width, height) > max_aspect_ratio:
        ratio = max(width, height) / max(min(width, height), 1)
        raise ImageTooLarge(
            f"the image is {width} x {height}, an aspect ratio of {ratio:,.0f}:1, more than "
            f"max_aspect_ratio={max_aspect_ratio:g}: resizing its short side would make it {ratio:,.0f} times longer "
            "than wide"
        )


def load_image(
    source: Image.Image | bytes | bytearray | str | os.PathLike | BinaryIO,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = MAX_ASPECT_RATIO,
) -> Image.Image:
    """An image (encoded bytes, a path, a binary file, or a PIL image, opened or decoded) -> a fully decoded 8-bit
    RGB image (`to_rgb`).

    The size in the image's header is checked (`check_image_size`) before a pixel is decoded.

    Raises:
        ImageTooLarge: over `max_pixels` or `max_aspect_ratio` (also for images past PIL's own decompression-bomb
            limit, which refuses them while reading the header).
        UnreadableImage: anything else that stops decoding, with the decoder's message.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return load_image(file, max_pixels, max_aspect_ratio)
    if isinstance(source, Image.Image):
        image = source
    else:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)
        except Image.DecompressionBombError as error:
            raise ImageTooLarge(f"the image is larger than PIL accepts ({error})") from None
        except Exception as error:  # noqa: BLE001 - PIL raises many types for bytes that are not an image
            raise UnreadableImage(f"{type(error).__name__}: {error}") from None
    check_image_size(*image.size, max_pixels, max_aspect_ratio)
    try:
        image.load()  # truncated data and oversized text chunks fail here, not later in a transform
    except Exception as error:  # noqa: BLE001 - as above, for the pixel data
        raise UnreadableImage(f"{type(error).__name__}: {error}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = ALPHA_BACKGROUND) -> Image.Image:
    """Any PIL image -> 8-bit RGB showing what its pixels mean (an RGB image is returned as it is).

    - 16-bit greyscale (`I;16`, `I;16B`, `I;16L`, `I;16N`, and `I`, which is how PIL opens some 16-bit files) is
      scaled from [0, 65535] to [0, 255];
    - floating point (`F`) is read as intensities in [0, 1] (clipped; NaN is black), the convention of float images;
    - transparency (an alpha band, or a palette or colour marked transparent) is composited over `background`;
    - every other mode (`1`, `L`, `P`, `CMYK`, `YCbCr`, `LAB`, `HSV`, ...) by PIL's `convert("RGB")`.

    Raises:
        UnreadableImage: a mode PIL cannot convert to RGB.
    """
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if image.mode == "RGB" and not has_alpha:
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        # Big- or little-endian uint16, or int32 for "I"; rounded to the nearest of 256 levels, in place (4 bytes a
        # pixel: a 64-megapixel image needs 256 MB here).
        samples = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        samples *= 255
        samples += 32767
        samples //= 65535
        return Image.fromarray(samples.astype(np.uint8)).convert("RGB")
    if image.mode == "F":
        samples = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0)
        return Image.fromarray(np.round(np.clip(samples, 0.0, 1.0) * 255).astype(np.uint8)).convert("RGB")
    try:
        if has_alpha:
            if image.mode == "La":  # premultiplied: PIL converts it to RGBA only through LA
                image = image.convert("LA")
            rgba = image.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:  # "conversion from X to RGB not supported"
        raise UnreadableImage(f"image mode {image.mode!r} cannot be converted to RGB ({error})") from None


class DualEncoderImagesKwargs(ImagesKwargs, total=False):
    """The settings of `DualEncoderImageProcessor` beyond CLIP's."""

    max_image_pixels: int
    max_aspect_ratio: float


class DualEncoderImageProcessor(CLIPImageProcessor):
    r"""transformers' `CLIPImageProcessor` with bounded inputs and `to_rgb` conversion: what the zero-shot pipeline,
    the Inference Endpoints handler and the Space run for hf-unified models.

    Every image is held against `max_image_pixels` and `max_aspect_ratio` before it is resized, so that a thin image
    (1 x 20,000 px, 140 bytes as a PNG) is refused with a `ImageTooLarge` (a `ValueError`) naming its size instead of
    being resized to 224 x 4,480,000 px; PIL images are converted with `to_rgb` (16-bit greyscale scaled, alpha
    composited on white) rather than PIL's `convert("RGB")`.

    Args:
        max_image_pixels (`int`, *optional*, defaults to `MAX_IMAGE_PIXELS` = 64,000,000):
            Most pixels an input image may have.
        max_aspect_ratio (`float`, *optional*, defaults to `MAX_ASPECT_RATIO` = 20):
            Largest `long side / short side` of an input image.
        kwargs: `CLIPImageProcessor`'s settings.

    Where the tensor backend's package is not installed (a core install), transformers resolves `CLIPImageProcessor`
    to its PIL backend and this class is built on that one: the checks sit in `process_image`, which both backends
    call once per input image.
    """

    valid_kwargs = DualEncoderImagesKwargs
    max_image_pixels = MAX_IMAGE_PIXELS
    max_aspect_ratio = MAX_ASPECT_RATIO

    def __init__(self, max_image_pixels: int = MAX_IMAGE_PIXELS, max_aspect_ratio: float = MAX_ASPECT_RATIO, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(max_image_pixels, int) and max_image_pixels > 0):
            raise ValueError(f"max_image_pixels must be a positive integer, got {max_image_pixels!r}")
        if not (isinstance(max_aspect_ratio, (int, float)) and max_aspect_ratio >= 1):
            raise ValueError(f"max_aspect_ratio must be a number >= 1, got {max_aspect_ratio!r}")
        self.max_image_pixels, self.max_aspect_ratio = max_image_pixels, float(max_aspect_ratio)

    def process_image(self, image, do_convert_rgb=None, input_data_format=None, **kwargs):
        if isinstance(image, Image.Image):
            check_image_size(*image.size, self.max_image_pixels, self.max_aspect_ratio)
            if self.do_convert_rgb if do_convert_rgb is None else do_convert_rgb:
                image = to_rgb(image)
        else:  # an array or tensor, channels first or last
            channel_dim = ChannelDimension(input_data_format) if input_data_format is not None else None
            height, width = get_image_size(image, channel_dim=channel_dim)
            check_image_size(width, height, self.max_image_pixels, self.max_aspect_ratio)
        return super().process_image(
            image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format, **kwargs
        )


def native_image_processor(image_processor):
    """transformers' own `CLIPImageProcessor` with the settings of a `DualEncoderImageProcessor` (any other image
    processor is returned as it is), for a folder that must load without custom code (the native CLIP export). The
    native class has no input bounds: the export's users get transformers' behaviour."""
    if not isinstance(image_processor, DualEncoderImageProcessor):
        return image_processor
    own = ("max_image_pixels", "max_aspect_ratio", "image_processor_type", "auto_map")
    return CLIPImageProcessor(**{k: v for k, v in image_processor.to_dict().items() if k not in own})


def center_crop_image_processor(
    crop_size: int, resize_size: int, image_mean: Sequence[float], image_std: Sequence[float]
) -> DualEncoderImageProcessor:
    """Bicubic resize of the shorter side to `resize_size`, centre crop to `crop_size`, RGB, `(x - mean) / std`,
    inputs bounded by the default limits (`DualEncoderImageProcessor`)."""
    return DualEncoderImageProcessor(
        do_resize=True,
        size={"shortest_edge": resize_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": crop_size, "width": crop_size},
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_convert_rgb=True,
    )


class DualEncoderProcessor(ProcessorMixin):
    r"""An image processor and any tokenizer, called like transformers' `CLIPProcessor`:
    `processor(text=[...], images=[...], padding=True, return_tensors="pt")`.

    Args:
        image_processor ([`DualEncoderImageProcessor`] or any image processor, *optional*):
            Defaults to the method's evaluation preprocessing, `default_image_processor()`.
        tokenizer (any tokenizer):
            The text tower's tokenizer.

    Subclasses only say which preprocessing is the method's own, by overriding `default_image_processor`.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is None:
            image_processor = self.default_image_processor()
        super().__init__(image_processor, tokenizer)

    @classmethod
    def default_image_processor(cls, image_size: int = 224) -> DualEncoderImageProcessor:
        """The method's evaluation preprocessing for `image_size`-pixel crops."""
        raise NotImplementedError(f"{cls.__name__} must define default_image_processor")

    @classmethod
    def from_pretrained_parts(cls, image_name_or_path: str, text_name_or_path: str | None = None, **kwargs):
        """A processor from pretrained checkpoints' own image processor and tokenizer (a CLIP folder has both; a
        vision backbone and a text backbone give one each), for models started with `from_clip` /
        `from_vision_text_pretrained`. `kwargs` go to both `from_pretrained` calls."""
        from transformers import AutoImageProcessor, AutoTokenizer

        image_processor = AutoImageProcessor.from_pretrained(image_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(text_name_or_path or image_name_or_path, **kwargs)
        return cls(image_processor=image_processor, tokenizer=tokenizer)


DualEncoderImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "ALPHA_BACKGROUND",
    "MAX_ASPECT_RATIO",
    "MAX_IMAGE_PIXELS",
    "DualEncoderImageProcessor",
    "DualEncoderProcessor",
    "ImageTooLarge",
    "UnreadableImage",
    "center_crop_image_processor",
    "check_image_size",
    "load_image",
    "native_image_processor",
    "to_rgb",
]
