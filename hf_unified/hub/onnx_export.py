"""ONNX export: a saved model's image and text encoders as two ONNX graphs that give projected, L2-normalised
embeddings, for onnxruntime (servers in any language, ONNX Runtime Web) without torch, transformers' modeling code or
this package.

    hf-unified-export-onnx MODEL_FOLDER OUTPUT_FOLDER [--overwrite]     # or: python -m hf_unified.hub.onnx_export ...

MODEL_FOLDER is a saved UniCL, UniCLIP or MS-CLIP folder (model + processor), or a native CLIP export
(`hf-unified-export-clip`). OUTPUT_FOLDER receives:

- `image_encoder.onnx`: `pixel_values` float32 `(batch, channels, height, width)` -> `image_embeds` float32
  `(batch, projection_dim)`; the batch is dynamic, the image size is the model's.
- `text_encoder.onnx`: `input_ids` and `attention_mask` int64 `(batch, sequence)` -> `text_embeds` float32
  `(batch, projection_dim)`; batch and sequence length (up to the model's positions) are dynamic.
- `onnx_export.json` (`ONNX_INFO_FILE`): the inputs and outputs, the similarity that turns embeddings into the
  model's logits (`logit_scale * image_embeds @ text_embeds.T + logit_bias`, the image-text pair's for UniCLIP's
  domain-dependent similarity) and how logits become probabilities, and the largest differences measured between
  onnxruntime and PyTorch before the folder was written.
- the tokenizer and `preprocessor_config.json`, as transformers' own classes (no custom code; `AutoTokenizer`,
  `AutoImageProcessor`), so that a user prepares inputs exactly as the model was trained to read them. The tokenizer's
  `model_max_length` is the model's number of positions, so `truncation=True` keeps texts inside the graph's range.

**Exporter.** `torch.onnx.export(..., dynamo=True)`, torch's maintained exporter (`torch.export` then onnxscript): it
records symbolic batch and sequence sizes, so dynamic axes are proved, not assumed, and fails loudly where a
graph would depend on data. The TorchScript exporter (`dynamo=False`) is deprecated since torch 2.9 and traces
Python branches on example values into the graph (`TracerWarning`s on the model's shape checks). The model is
exported with eager attention (see `export_onnx`).

**Validation outside the graph.** The models check input *values* (token ids inside the vocabulary, texts that are
not all padding) in eager mode; a graph cannot hold a Python check on data, so those are skipped while exporting
(`dual_encoder.capturing_graph`) and the graph's caller gets its inputs from the saved tokenizer and image processor.

**Safety.** An existing OUTPUT_FOLDER is replaced only with `--overwrite`, and never when it is, contains or lies
inside the model folder or holds a training run or a saved model (`export.check_export_target`); the folder is
written aside and published in one rename (`hf_unified.files.StagedFolder`) only after the onnxruntime check passed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor, PreTrainedModel

import hf_unified
from hf_unified.image_processing import native_image_processor
from hf_unified.losses import DOMAIN_PAIRS

from ..files import StagedFolder, write_file
from .export import SAMPLE_TEXTS, check_export_target, check_tolerance, image_text_index, tolerance_argument

SUPPORTED_TYPES = ("unicl", "uniclip", "msclip", "clip")  # "clip": a native export (`hf-unified-export-clip`)
IMAGE_FILE, TEXT_FILE = "image_encoder.onnx", "text_encoder.onnx"
ONNX_INFO_FILE = "onnx_export.json"
# What the export needs besides torch (the `onnx` extra): the dynamo exporter writes with onnxscript, the check runs
# in onnxruntime.
REQUIRED_MODULES = ("onnx", "onnxscript", "onnxruntime")
# Files a processor's `save_pretrained` writes for each part (transformers 5 keeps the image processor inside
# `processor_config.json`; older folders and native exports have `preprocessor_config.json`).
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model")
IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
# The processor of a custom-code folder points the tokenizer back at its class; the export has no custom code.
CUSTOM_CODE_KEYS = ("auto_map", "processor_class")
# A graph of more bytes than this keeps its weights in a `<file>.data` beside it (protobuf's 2 GiB limit); smaller
# graphs are one self-contained file (what ONNX Runtime Web and most servers load most simply).
MAX_SINGLE_FILE_BYTES = 1 << 30
CHECK_BATCH_SIZES = (2, 1)  # the onnxruntime check runs the graphs at two batch sizes (and two text lengths)


class OnnxExportError(ValueError):
    """The folder cannot be exported to ONNX, or the exported graphs differ from the model; the message says why."""


@dataclass
class OnnxExportResult:
    """What `export_onnx` wrote and how closely onnxruntime reproduces the model."""

    output_dir: Path
    source_model_type: str
    max_abs_difference: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        diffs = ", ".join(f"{name} {value:.2e}" for name, value in self.max_abs_difference.items())
        return (
            f"exported the {self.source_model_type} model's encoders to {self.output_dir} ({IMAGE_FILE}, {TEXT_FILE}, "
            f"{ONNX_INFO_FILE}, tokenizer and image processor; max |onnxruntime - PyTorch|: {diffs})"
        )


class ImageEmbeddingGraph(nn.Module):
    """What `image_encoder.onnx` computes: `(batch, channels, height, width)` pixel values -> `(batch,
    projection_dim)` L2-normalised projected embeddings (augmentation-aware models at the identity parameters)."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.model.get_image_features(pixel_values=pixel_values).pooler_output
        return nn.functional.normalize(features, dim=-1)


class TextEmbeddingGraph(nn.Module):
    """What `text_encoder.onnx` computes: `(batch, sequence)` token ids and attention mask -> `(batch,
    projection_dim)` L2-normalised projected embeddings."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        features = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return nn.functional.normalize(features, dim=-1)


def check_onnx_installed() -> None:
    """Raises a one-line `OnnxExportError` naming the install command when a module the export needs is missing."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise OnnxExportError(
            f"the ONNX export needs {', '.join(missing)}, not installed: pip install 'hf-unified[onnx]'"
        )


def check_model_folder(folder: Path) -> str:
    """The model type of the saved model `folder`, refused with the reason when it is not a folder this export
    reads (no `config.json`, another model type, no tokenizer or image processor). Reads JSON only: nothing is
    loaded before the folder is known to be one."""
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise OnnxExportError(f"{folder} is not a folder: give a saved model folder (save_pretrained)")
    if not config_file.is_file():
        raise OnnxExportError(f"{folder} is not a saved model folder (no config.json): give a save_pretrained folder")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (ValueError, AttributeError, UnicodeDecodeError) as error:
        raise OnnxExportError(f"{config_file} is not a model config (not a JSON object: {error})") from None
    if model_type not in SUPPORTED_TYPES:
        raise OnnxExportError(
            f"{folder} holds a {model_type!r} model; the ONNX export reads {', '.join(SUPPORTED_TYPES)} folders "
            "(saved hf-unified models or their native CLIP export)"
        )
    missing = [
        part
        for part, names in (("tokenizer", TOKENIZER_FILES), ("image processor", IMAGE_PROCESSOR_FILES))
        if not any((folder / name).is_file() for name in names)
    ]
    if missing:
        raise OnnxExportError(
            f"{folder} has no {' and no '.join(missing)} (none of "
            f"{', '.join(TOKENIZER_FILES + IMAGE_PROCESSOR_FILES)}): the export ships the processor so that users "
            "prepare inputs as the model expects; save it beside the model with processor.save_pretrained(folder)"
        )
    return model_type


def image_text_similarity(model: PreTrainedModel) -> dict:
    """How the model turns normalised embeddings into its logits: `logit_scale * cos + logit_bias` with the values of
    the image-text pair (UniCLIP's image-image and text-text scales and offsets only matter in training)."""
    scales = model.logit_scale.detach().float().exp().reshape(-1)
    offsets = getattr(model, "logit_offset", None)
    offsets = torch.zeros(1) if offsets is None else offsets.detach().float().reshape(-1)
    scale, offset = scales[image_text_index(scales)].item(), offsets[image_text_index(offsets)].item()
    config = model.config
    sigmoid = getattr(config, "contrastive_loss", None) == "sigmoid"
    similarity = {
        "logit_scale": scale,
        "logit_offset": offset,
        "logit_bias": -scale * offset or 0.0,  # not -0.0
        "logits": "logits_per_image = logit_scale * (image_embeds @ text_embeds.T - logit_offset) "
        "= logit_scale * image_embeds @ text_embeds.T + logit_bias",
        "probabilities": "sigmoid of each logit (trained with the sigmoid loss)"
        if sigmoid
        else "softmax over the candidate texts of each image (zero-shot classification)",
    }
    if scales.numel() == len(DOMAIN_PAIRS):
        similarity["domain_pairs"] = (
            f"the model keeps a scale and offset per domain pair {list(DOMAIN_PAIRS)}; these are the image-text "
            f"pair's (the others only matter in training): scales {scales.tolist()}, offsets {offsets.tolist()}"
        )
    return similarity


def _sample_inputs(model: PreTrainedModel, tokenizer, batch_size: int, texts: tuple[str, ...]) -> dict:
    """Random images and tokenised `texts` (truncated to the model's positions), float32 / int64."""
    vision = model.config.vision_config
    generator = torch.Generator().manual_seed(batch_size)
    shape = (batch_size, vision.num_channels, vision.image_size, vision.image_size)
    text = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt")
    return {
        "pixel_values": torch.randn(shape, generator=generator),
        "input_ids": text["input_ids"].to(torch.int64),
        "attention_mask": text["attention_mask"].to(torch.int64),
    }


def _export_graphs(model: PreTrainedModel, inputs: dict, folder: Path) -> None:
    """Writes the two graphs with dynamic batch (and sequence) sizes."""
    positions = model.config.text_config.max_position_embeddings
    external_data = sum(p.numel() * p.element_size() for p in model.parameters()) > MAX_SINGLE_FILE_BYTES
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=positions)
    text_axes = {0: batch, 1: sequence}
    for graph, names, dynamic, output, file in (
        (ImageEmbeddingGraph(model), ("pixel_values",), {"pixel_values": {0: batch}}, "image_embeds", IMAGE_FILE),
        (
            TextEmbeddingGraph(model),
            ("input_ids", "attention_mask"),
            {"input_ids": text_axes, "attention_mask": text_axes},
            "text_embeds",
            TEXT_FILE,
        ),
    ):
        with warnings.catch_warnings():
            # The exporter names each axis once and says so when two inputs share one (input_ids, attention_mask).
            warnings.filterwarnings("ignore", message=r"# The axis name: \w+ will not be used", category=UserWarning)
            torch.onnx.export(
                graph.eval(),
                tuple(inputs[name] for name in names),
                folder / file,
                dynamo=True,
                input_names=list(names),
                output_names=[output],
                dynamic_shapes=dynamic,
                external_data=external_data,
                verbose=False,
            )


@torch.no_grad()
def compare_with_onnxruntime(model: PreTrainedModel, folder: Path, inputs: list[dict]) -> dict[str, float]:
    """Largest absolute differences between the graphs in `folder` run by onnxruntime and the model in PyTorch,
    over every batch of `inputs`."""
    import onnxruntime  # the `onnx` extra; checked by `check_onnx_installed`

    differences = {"image_embeds": 0.0, "text_embeds": 0.0}
    for file, graph, output, names in (
        (IMAGE_FILE, ImageEmbeddingGraph(model), "image_embeds", ("pixel_values",)),
        (TEXT_FILE, TextEmbeddingGraph(model), "text_embeds", ("input_ids", "attention_mask")),
    ):
        session = onnxruntime.InferenceSession(str(folder / file), providers=["CPUExecutionProvider"])
        for sample in inputs:
            expected = graph(*(sample[name] for name in names))
            (got,) = session.run([output], {name: sample[name].numpy() for name in names})
            difference = (expected - torch.from_numpy(got)).abs().max().item()
            differences[output] = max(differences[output], difference)
    return differences


def _save_processor(processor, model: PreTrainedModel, folder: Path) -> None:
    """The tokenizer and image processor as transformers' own classes, the tokenizer bounded by the model's
    positions and without pointers to custom code."""
    tokenizer = processor.tokenizer
    tokenizer.model_max_length = min(tokenizer.model_max_length, model.config.text_config.max_position_embeddings)
    tokenizer.save_pretrained(folder)
    native_image_processor(processor.image_processor).save_pretrained(folder)
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config = {key: value for key, value in config.items() if key not in CUSTOM_CODE_KEYS}
        write_file(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _export_info(model: PreTrainedModel, differences: dict[str, float], atol: float) -> dict:
    vision, text = model.config.vision_config, model.config.text_config
    projection_dim = model.config.projection_dim
    embeds = {"dtype": "float32", "shape": ["batch", projection_dim]}
    tokens = {"dtype": "int64", "shape": ["batch", "sequence"]}
    return {
        "exported_with": f"hf-unified {hf_unified.__version__}, torch {torch.__version__}",
        "exporter": "torch.onnx.export(dynamo=True)",
        "source_model_type": model.config.model_type,
        "source_architecture": type(model).__name__,
        "projection_dim": projection_dim,
        "image_encoder": {
            "file": IMAGE_FILE,
            "inputs": {
                "pixel_values": {
                    "dtype": "float32",
                    "shape": ["batch", vision.num_channels, vision.image_size, vision.image_size],
                }
            },
            "outputs": {"image_embeds": embeds},
            "preprocessing": "AutoImageProcessor.from_pretrained(folder)(images, return_tensors='np')",
        },
        "text_encoder": {
            "file": TEXT_FILE,
            "inputs": {"input_ids": tokens, "attention_mask": tokens},
            "outputs": {"text_embeds": embeds},
            "max_sequence_length": text.max_position_embeddings,
            "vocab_size": text.vocab_size,
            "preprocessing": "AutoTokenizer.from_pretrained(folder)(texts, padding=True, truncation=True, "
            "return_tensors='np')",
        },
        "embeddings": "L2-normalised: image_embeds @ text_embeds.T are cosine similarities",
        "similarity": image_text_similarity(model),
        "atol": atol,
        "max_abs_difference": differences,
    }


def export_onnx(
    model_folder: str | Path, output_dir: str | Path, *, overwrite: bool = False, atol: float = 1e-4
) -> OnnxExportResult:
    """Exports the image and text encoders of a saved model folder to ONNX (see the module docstring).

    Args:
        model_folder: a saved UniCL / UniCLIP / MS-CLIP folder or a native CLIP export, with its processor.
        output_dir: the folder to write (must not exist unless `overwrite`).
        overwrite: replace an existing `output_dir` (never one that `export.check_export_target` protects).
        atol: largest absolute difference allowed between onnxruntime's embeddings and PyTorch's.

    Returns:
        An `OnnxExportResult` with the largest differences measured.

    Raises:
        OnnxExportError: the folder is not a model this export reads, a module is missing, or the graphs differ from
            the model by more than `atol` (then nothing is written).
        FileExistsError: `output_dir` exists and `overwrite` is False.
        ExportTargetError: `output_dir` must not be replaced.
    """
    model_folder, output_dir = Path(model_folder), Path(output_dir)
    atol = check_tolerance(atol)
    check_onnx_installed()
    check_model_folder(model_folder)
    check_export_target(output_dir, model_folder, overwrite)
    # Eager attention: transformers' SDPA path of some towers (Swin) reshapes a transposed output in a way torch's
    # ONNX decompositions reject under a symbolic batch size. The function is the same, and ONNX (opset < 23) has no
    # attention operator: either way the graph holds the matmul-softmax-matmul that onnxruntime fuses.
    model = AutoModel.from_pretrained(model_folder, dtype=torch.float32, attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(model_folder)
    # Two batch sizes and two text lengths: the dynamic axes are checked, not only the traced sizes.
    samples = [
        _sample_inputs(model, processor.tokenizer, batch_size, SAMPLE_TEXTS[: batch_size + 1])
        for batch_size in CHECK_BATCH_SIZES
    ]
    with StagedFolder(output_dir) as staging:  # published when complete, removed on an error
        _export_graphs(model, samples[0], staging)
        differences = compare_with_onnxruntime(model, staging, samples)
        if max(differences.values()) > atol:
            raise OnnxExportError(
                f"the ONNX graphs differ from the PyTorch model by more than atol={atol:g}: {differences}; nothing "
                "was written"
            )
        _save_processor(processor, model, staging)
        write_file(staging / ONNX_INFO_FILE, json.dumps(_export_info(model, differences, atol), indent=2) + "\n")
        check_export_target(output_dir, model_folder, overwrite)  # the target may have changed meanwhile
    return OnnxExportResult(output_dir, model.config.model_type, differences)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-unified-export-onnx",
        description="Export a saved model's image and text encoders to ONNX (normalised embeddings, dynamic batch "
        "and text length), with the logit scale and bias and the tokenizer and image processor.",
    )
    parser.add_argument("model_folder", help="saved UniCL / UniCLIP / MS-CLIP folder, or a native CLIP export")
    parser.add_argument("output_folder", help="folder to write the .onnx files, onnx_export.json and processor to")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output_folder")
    parser.add_argument(
        "--atol", type=tolerance_argument, default=1e-4, help="largest onnxruntime - PyTorch difference (default 1e-4)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = export_onnx(args.model_folder, args.output_folder, overwrite=args.overwrite, atol=args.atol)
    except (FileExistsError, ValueError, OSError) as error:
        print(f"hf-unified-export-onnx: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


__all__ = [
    "IMAGE_FILE",
    "ONNX_INFO_FILE",
    "TEXT_FILE",
    "ImageEmbeddingGraph",
    "OnnxExportError",
    "OnnxExportResult",
    "TextEmbeddingGraph",
    "check_model_folder",
    "compare_with_onnxruntime",
    "export_onnx",
    "image_text_similarity",
    "main",
]

if __name__ == "__main__":
    sys.exit(main())
