"""UniCLIP processor: CLIP's evaluation preprocessing and any tokenizer.

The processor prepares *un-augmented* images (inference, zero-shot, retrieval): the model then uses the identity
augmentation parameters. Training views come from `hf_unified.training.data.augmentation.MultiViewAugmentation`, which
normalises with the same mean/std.
"""

from transformers import CLIPImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .image_processing import DualEncoderProcessor, center_crop_image_processor


def uniclip_image_processor(image_size: int = 224) -> CLIPImageProcessor:
    """CLIP's evaluation preprocessing: bicubic resize of the shorter side to `image_size`, centre crop, CLIP's
    mean/std. UniCLIP follows the CLIP benchmark protocol (ViT-B/32 trained from scratch), whose models use CLIP's
    normalisation; the paper's exact choice is unconfirmed, and `MultiViewAugmentation` uses the same constants."""
    return center_crop_image_processor(image_size, image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


class UniCLIPProcessor(DualEncoderProcessor):
    r"""Prepares images and texts for [`UniCLIPModel`] at inference.

    Args:
        image_processor ([`CLIPImageProcessor`] or any image processor, *optional*):
            Defaults to [`uniclip_image_processor`]: bicubic resize to 224, centre crop 224, CLIP mean/std.
        tokenizer (any tokenizer):
            The text tower's tokenizer (the CLIP BPE for the default CLIP-style text tower).
    """

    @classmethod
    def default_image_processor(cls, image_size: int = 224) -> CLIPImageProcessor:
        return uniclip_image_processor(image_size)


UniCLIPProcessor.register_for_auto_class()

__all__ = ["UniCLIPProcessor", "uniclip_image_processor"]
