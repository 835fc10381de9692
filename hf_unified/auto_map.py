"""What a saved folder needs so that transformers can load it as Hub custom code."""


class ZeroShotAutoMapMixin:
    """Adds the zero-shot pipeline's Auto class to ``config.auto_map`` when a model is saved.

    ``register_for_auto_class("AutoModel")`` makes ``save_pretrained`` copy the code files and write the ``AutoModel``
    entry, but a class registers for one Auto class only, and ``pipeline("zero-shot-image-classification")`` resolves
    the model through ``AutoModelForZeroShotImageClassification``. Both entries point at the same class.

    Set ``zero_shot_class_name`` to the name of the dual-encoder class in the same module.
    """

    zero_shot_class_name: str

    def save_pretrained(self, save_directory, *args, **kwargs):
        module = type(self).__module__.rsplit(".", 1)[-1]
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            "AutoModelForZeroShotImageClassification": f"{module}.{self.zero_shot_class_name}",
        }
        return super().save_pretrained(save_directory, *args, **kwargs)
