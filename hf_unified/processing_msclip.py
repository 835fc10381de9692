"""MS-CLIP processor: an image processor and any tokenizer."""

from transformers import CLIPImageProcessor, ProcessorMixin
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .image_processing import center_crop_image_processor


def msclip_image_processor(image_size: int = 224) -> CLIPImageProcessor:
    """MS-CLIP's evaluation preprocessing (`tools/zero_shot.py`): bicubic resize of the shorter side to the model
    resolution, centre crop, ImageNet mean/std (not CLIP's)."""
    return center_crop_image_processor(image_size, image_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class MSCLIPProcessor(ProcessorMixin):
    r"""Prepares images and texts for [`MSCLIPModel`].

    Args:
        image_processor ([`CLIPImageProcessor`] or any image processor, *optional*):
            Defaults to MS-CLIP's preprocessing at 224 px: bicubic resize, centre crop, ImageNet mean/std. Use
            `msclip_image_processor(config.image_size)` for other resolutions.
        tokenizer (any tokenizer):
            The CLIP BPE tokenizer for the released models. Any pad id works: the model pools at the first
            end-of-text token (`config.eos_token_id`).

    Call it like transformers' `CLIPProcessor`:
    `processor(text=[...], images=[...], padding=True, return_tensors="pt")`.
    """

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        if image_processor is None:
            image_processor = msclip_image_processor()
        super().__init__(image_processor, tokenizer)


MSCLIPProcessor.register_for_auto_class()

__all__ = ["MSCLIPProcessor", "msclip_image_processor"]
