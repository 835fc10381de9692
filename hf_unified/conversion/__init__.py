"""Converters from the official UniCL and MS-CLIP checkpoints to `save_pretrained` folders.

`common` holds the skeleton every converter shares (safe loading, strict key accounting, writing the folder); each
method's module keeps only what is its own: shape inference and the key map. Console scripts:
`hf-unified-convert-unicl`, `hf-unified-convert-msclip` (or `python -m hf_unified.conversion.unicl` / `.msclip`).
"""
