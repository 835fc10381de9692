"""UniCL processor: an image processor and any tokenizer."""

from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .image_processing import center_crop_image_processor


def unicl_image_processor(image_size: int = 224, resize_size: int | None = None) -> CLIPImageProcessor:
    """UniCL's evaluation preprocessing (`data/build.py`): bicubic resize of the shorter side to 256/224 of the
    crop, centre crop, ImageNet mean/std (not CLIP's)."""
    resize_size = resize_size or int(256 / 224 * image_size)
    return center_crop_image_processor(image_size, resize_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class UniCLProcessor(ProcessorMixin):
    r"""Prepares images and texts for [`UniCLModel`].

    Args:
        image_processor ([`CLIPImageProcessor`] or any image processor, *optional*):
            Defaults to UniCL's preprocessing: bicubic resize to 256, centre crop 224, ImageNet mean/std.
        tokenizer (any tokenizer):
            The text tower's tokenizer (the CLIP BPE for the released models, BERT's WordPiece for a BERT tower, ...).

    Call it like transformers' `CLIPProcessor`:
    `processor(text=[...], images=[...], padding=True, return_tensors="pt")`.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is None:
            image_processor = unicl_image_processor()
        super().__init__(image_processor, tokenizer)


UniCLProcessor.register_for_auto_class()

__all__ = ["UniCLProcessor", "unicl_image_processor"]
