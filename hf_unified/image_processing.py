"""The evaluation preprocessing every method here uses, and the one processor class the three methods share.

The methods differ only in the numbers (resize margin, mean/std): each processor states those through its
`default_image_processor`, which builds transformers' own `CLIPImageProcessor` with `center_crop_image_processor`.
"""

from collections.abc import Sequence

from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.image_utils import PILImageResampling


def center_crop_image_processor(
    crop_size: int, resize_size: int, image_mean: Sequence[float], image_std: Sequence[float]
) -> CLIPImageProcessor:
    """Bicubic resize of the shorter side to `resize_size`, centre crop to `crop_size`, RGB, `(x - mean) / std`."""
    return CLIPImageProcessor(
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
        image_processor ([`CLIPImageProcessor`] or any image processor, *optional*):
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
    def default_image_processor(cls, image_size: int = 224) -> CLIPImageProcessor:
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


__all__ = ["DualEncoderProcessor", "center_crop_image_processor"]
