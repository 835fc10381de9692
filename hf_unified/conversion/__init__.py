"""Converters from the official UniCL and MS-CLIP checkpoints to `save_pretrained` folders.

- `safe_load`: reading a `.pth` file without running pickled code (a closed allowlist of globals, by full name).
- `common`: strict accounting of the official tensors and the helpers the key maps use.
- `converter`: the conversion and its command line, written once ([`Converter`]).
- `unicl`, `msclip`: what is each method's own: shape inference, presets as config fields, flags, the key map.

Console scripts: `hf-unified-convert-unicl`, `hf-unified-convert-msclip` (or `python -m hf_unified.conversion.unicl`
/ `.msclip`).
"""
