"""The core install is inference: the Hub code imports no training, Hub or conversion module and none of the
training extra's packages, and a saved folder loads and classifies in a Python where those packages are absent."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image
from tiny_models import tiny_model

from hf_unified import UniCLIPProcessor

PACKAGE = Path(__file__).resolve().parents[1] / "hf_unified"
# What the train/convert/hub extras add beyond the core (numpy, pyyaml and tqdm come with transformers).
TRAINING_EXTRA = ("torchvision", "datasets", "accelerate", "evaluate", "jinja2")
SUBPACKAGES = ("training", "hub", "conversion")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add("." * node.level + (node.module or ""))
    return names


def test_hub_code_imports_neither_subpackages_nor_training_packages():
    for path in sorted(PACKAGE.glob("*.py")):
        for name in _imports(path):
            top = name.lstrip(".").split(".")[0]
            assert top not in TRAINING_EXTRA, f"{path.name} imports {name}"
            if name.startswith("."):
                assert name.count(".") == 1 and not name.startswith(".."), f"{path.name}: {name} is not flat"
                assert top not in SUBPACKAGES, f"{path.name} imports the {top} subpackage"
            assert not name.startswith("hf_unified"), f"{path.name} imports its own package absolutely: {name}"


def test_a_saved_uniclip_folder_runs_without_the_training_packages(tmp_path):
    from hf_unified.tokenization import train_caption_tokenizer

    model = tiny_model("uniclip")
    tokenizer = train_caption_tokenizer(["a red square", "a blue circle", "a photo"] * 3, vocab_size=64)
    model.config.text_config.vocab_size = max(model.config.text_config.vocab_size, len(tokenizer))
    model.save_pretrained(tmp_path)
    UniCLIPProcessor(UniCLIPProcessor.default_image_processor(32), tokenizer).save_pretrained(tmp_path)
    assert not list(tmp_path.glob("augmentation*.py"))
    Image.new("RGB", (40, 36), (200, 30, 30)).save(tmp_path / "image.png")
    code = f"""
        import json, sys
        for name in {TRAINING_EXTRA!r}:
            sys.modules[name] = None  # as if not installed: imports fail, find_spec says absent
        import hf_unified
        from transformers import AutoModel, pipeline
        from PIL import Image
        folder = {str(tmp_path)!r}
        model = AutoModel.from_pretrained(folder)
        classify = pipeline("zero-shot-image-classification", model=folder)
        scores = classify(Image.open(folder + "/image.png"), candidate_labels=["red", "blue", "green"])
        model.save_pretrained(folder + "/again")
        print(json.dumps({{"model": type(model).__name__, "total": sum(s["score"] for s in scores)}}))
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["model"] == "UniCLIPModel" and abs(report["total"] - 1) < 1e-5
    assert (tmp_path / "again" / "model.safetensors").is_file()
