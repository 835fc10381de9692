"""MS-CLIP processor: MS-CLIP's evaluation preprocessing and any tokenizer."""

from transformers import CLIPImageProcessor
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from .image_processing import DualEncoderProcessor, center_crop_image_processor


def msclip_image_processor(image_size: int = 224) -> CLIPImageProcessor:
    """MS-CLIP's evaluation preprocessing (`tools/zero_shot.py`): bicubic resize of the shorter side to the model
    resolution, centre crop, ImageNet mean/std (not CLIP's)."""
    return center_crop_image_processor(image_size, image_size, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


class MSCLIPProcessor(DualEncoderProcessor):
    r"""Prepares images and texts for [`MSCLIPModel`].

    Args:
        image_processor ([`CLIPImageProcessor`] or any image processor, *optional*):
            Defaults to MS-CLIP's preprocessing at 224 px: bicubic resize, centre crop, ImageNet mean/std. Use
            `msclip_image_processor(config.image_size)` for other resolutions.
        tokenizer (any tokenizer):
            The CLIP BPE tokenizer for the released models. Any pad id works: the model pools at the first
            end-of-text token (`config.eos_token_id`).
    """

    @classmethod
    def default_image_processor(cls, image_size: int = 224) -> CLIPImageProcessor:
        return msclip_image_processor(image_size)


MSCLIPProcessor.register_for_auto_class()

__all__ = ["MSCLIPProcessor", "msclip_image_processor"]
