"""Model cards: metadata that huggingface_hub parses, model-index from the eval JSON, body sections, per method."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load
from transformers import CLIPTextConfig, CLIPVisionConfig

import hf_unified.hub.model_card as model_card_module
from hf_unified.hub.model_card import (
    CARD_MARKER,
    HUB_ID_PLACEHOLDER,
    METHODS,
    eval_sections,
    render_model_card,
    template_path,
    templates_dir,
    write_model_card,
)
from hf_unified.losses import MULTI_POSITIVE_VARIANTS

REPO_ROOT = Path(__file__).resolve().parents[2]

TOWERS = {
    "vision_config": CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32, patch_size=8
    ),
    "text_config": CLIPTextConfig(
        vocab_size=600,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        bos_token_id=598,
        eos_token_id=599,
        pad_token_id=599,
    ),
}

# How each method's tiny config is built from its configuration module (skipped while the module is missing).
CONFIGS = {
    "unicl": ("configuration_unicl", "UniCLConfig", lambda cls: cls(**TOWERS, projection_dim=16)),
    "uniclip": (
        "configuration_uniclip",
        "UniCLIPConfig",
        lambda cls: cls(**TOWERS, projection_dim=16, contrastive_loss="supcon", augmentation_fusion="concat"),
    ),
    "msclip": ("configuration_msclip", "MSCLIPConfig", lambda cls: cls()),
}

FLAT_EVAL = {
    "step": 200,
    "train_samples_skipped": 0,
    "num_examples": 64,
    "num_skipped": 0,
    "zero_shot_top1_accuracy": 0.6875,
    "zero_shot_top5_accuracy": 0.953125,
    "zero_shot_chance": 0.125,
    "image_to_text_R@1": 0.25,
    "text_to_image_R@1": 0.3125,
    "image_to_text_R@5": 0.75,
}
TRAINING_ARGS = {
    "model_type": "unicl",
    "train_data": ["data/shapes/train-*.tar", "data/shapes/train-*.tar"],
    "train_format": None,
    "eval_data": "data/shapes/eval-*.tar",
    "max_steps": 200,
    "learning_rate": 0.0005,
    "per_device_train_batch_size": 64,
    "hub_model_id": None,
}


def saved_config(method: str, folder):
    module_name, class_name, build = CONFIGS[method]
    module = importlib.import_module(f"hf_unified.{module_name}")
    config = build(getattr(module, class_name))
    config.save_pretrained(folder)
    return config


@pytest.mark.parametrize("method", sorted(METHODS))
def test_card_metadata_and_body_for_each_method(method, tmp_path):
    config = saved_config(method, tmp_path)
    (tmp_path / "eval_results.json").write_text(json.dumps(FLAT_EVAL))
    (tmp_path / "training_args.json").write_text(json.dumps({**TRAINING_ARGS, "model_type": method}))
    path = write_model_card(tmp_path, repo_id="my-org/tiny-" + method)
    assert path == tmp_path / "README.md"

    metadata = metadata_load(path)
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "zero-shot-image-classification"
    assert {method, "contrastive-learning", "custom_code"} <= set(metadata["tags"])
    assert metadata["license"] == "apache-2.0"
    # The run's evaluation shards do not exist here, so no example can be true to the model: none is shown (the
    # cat/dog photos would be wrong for a shapes model).
    assert "widget" not in metadata
    assert "base_model" not in metadata and "datasets" not in metadata  # a local run on local shards has neither

    card = ModelCard.load(path)
    results = {(r.task_type, r.metric_name): r.metric_value for r in card.data.eval_results}
    assert results == {
        ("zero-shot-image-classification", "Top-1 accuracy"): 0.6875,
        ("zero-shot-image-classification", "Top-5 accuracy"): 0.953125,
        ("image-text-retrieval", "Image-to-text R@1"): 0.25,
        ("image-text-retrieval", "Text-to-image R@1"): 0.3125,
        ("image-text-retrieval", "Image-to-text R@5"): 0.75,
    }
    assert {r.dataset_type for r in card.data.eval_results} == {"hf-unified/shapes"}
    assert card.data.model_name == "tiny-" + method

    text = card.text
    info = METHODS[method]
    assert CARD_MARKER in card.content
    assert f"arXiv:{info.arxiv}" in text and f"eprint    = {{{info.arxiv}}}" in text and "@inproceedings" in text
    for snippet in (
        "AutoModel.from_pretrained",
        "AutoProcessor.from_pretrained",
        'pipeline("zero-shot-image-classification"',
        "trust_remote_code=True",
        'model_id = "my-org/tiny-' + method + '"',
    ):
        assert snippet in text, snippet
    assert HUB_ID_PLACEHOLDER not in text
    assert (
        "| Zero-shot image classification | hf-unified synthetic shapes (held-out split) | Top-1 accuracy | 0.6875 |"
        in text
    )
    assert "chance level 0.125" in text and "64 evaluation examples" in text
    assert "| `learning_rate` | 0.0005 |" in text and "| `max_steps` | 200 |" in text
    assert "## Limitations" in text and "## Training" in text
    assert f"{config.projection_dim} dimensions" in text
    assert "{{ " not in card.content and "{%" not in card.content  # every template variable was filled


def test_uniclip_card_states_the_interpretation_this_config_takes(tmp_path):
    saved_config("uniclip", tmp_path)
    text = render_model_card(tmp_path).text
    table = text.split("## Interpretation choices", 1)[1].split("## Training", 1)[0]
    assert "| Contrastive loss (`contrastive_loss`) | `supcon` |" in table
    assert "(`augmentation_fusion`) | `concat` |" in table
    assert "(`domain_similarity`) | `True`" in table
    assert "projection head" in table


def test_nested_eval_json_and_converted_checkpoint(tmp_path):
    saved_config("unicl", tmp_path)
    eval_results = {
        "zero_shot": [
            {
                "dataset": "ImageNet-1k",
                "dataset_type": "imagenet-1k",
                "split": "validation",
                "top1": 0.71,
                "top5": 0.9,
            },
            {"dataset": "CIFAR-10", "dataset_type": "cifar10", "top1": 0.8},
        ],
        "retrieval": {
            "dataset": "COCO 5k",
            "dataset_type": "coco",
            "image_to_text_R@1": 0.4,
            "text_to_image_R@10": 0.7,
        },
    }
    card = render_model_card(
        tmp_path,
        "unicl",
        eval_results=eval_results,
        base_model="microsoft/unicl-swin-tiny",
        source_checkpoint="in21k_yfcc14m.pth",
        datasets=["imagenet-1k"],
        license="mit",
    )
    path = tmp_path / "README.md"
    card.save(path)
    metadata = metadata_load(path)
    assert metadata["base_model"] == "microsoft/unicl-swin-tiny"
    assert metadata["datasets"] == ["imagenet-1k"] and metadata["license"] == "mit"
    assert "converted-checkpoint" in metadata["tags"]
    results = {(r.dataset_type, r.metric_type): r.metric_value for r in ModelCard.load(path).data.eval_results}
    assert results == {
        ("imagenet-1k", "accuracy"): 0.71,
        ("imagenet-1k", "top_5_accuracy"): 0.9,
        ("cifar10", "accuracy"): 0.8,
        ("coco", "recall@1"): 0.4,
        ("coco", "recall@10"): 0.7,
    }
    assert "converted from the official checkpoint `in21k_yfcc14m.pth`" in card.text
    assert "No training record" in card.text
    assert f'model_id = "{HUB_ID_PLACEHOLDER}"' in card.text  # push_folder fills in the repo id


def test_eval_sections_ignore_bookkeeping_and_reject_bad_input():
    sections = eval_sections({"step": 3, "num_examples": 5, "loss": "n/a"}, ("d", "d"))
    assert sections == []
    with pytest.raises(ValueError, match="eval_results"):
        eval_sections({"zero_shot": [1, 2]}, ("d", "d"))
    with pytest.raises(ValueError, match="must be a dict"):
        eval_sections([0.5], ("d", "d"))


def test_bad_folders_and_methods_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        render_model_card(tmp_path)
    saved_config("unicl", tmp_path)
    with pytest.raises(ValueError, match="unknown method 'clip'"):
        render_model_card(tmp_path, "clip")
    with pytest.raises(ValueError, match="does not match config.json's model_type 'unicl'"):
        render_model_card(tmp_path, "uniclip")
    (tmp_path / "eval_results.json").write_text("{not json")
    with pytest.raises(ValueError, match="eval_results.json .* not valid JSON"):
        render_model_card(tmp_path)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_templates_exist_and_cite_their_paper(method):
    """Each method's template extends the base card (metadata, usage, evaluation, citation) and cites its paper."""
    text = template_path(method).read_text()
    base = (templates_dir() / "base.md").read_text()
    assert text.startswith('{% extends "base.md" %}')
    assert "{{ card_data }}" in base and '{% include "partials/usage.md" %}' in base
    assert '{% include "partials/evaluation.md" %}' in base
    assert "```bibtex" in base and "{% block bibtex %}" in text and METHODS[method].arxiv in text


def test_every_template_ships_with_the_package():
    """pyproject's package data covers every template and partial (the installed package renders from them)."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    root = REPO_ROOT / config["package-dir"]["hf_unified.model_cards"]
    patterns = config["package-data"]["hf_unified.model_cards"]
    templates = [path.relative_to(root).as_posix() for path in root.rglob("*.md")]
    assert "base.md" in templates and "partials/usage.md" in templates
    assert all(any(fnmatch.fnmatch(name, pattern) for pattern in patterns) for name in templates), templates


def test_model_card_module_prepares_data_only():
    """No per-method branch and no Markdown in `hub/model_card.py`: no comparison, `match` or mapping on a method
    name besides `METHODS` (the methods' facts), and no string but a docstring holds card text (headings, tables,
    emphasis, code fences). What differs between methods is in their templates or read from the config."""
    tree = ast.parse(Path(model_card_module.__file__).read_text())
    names = {*METHODS, "clip"}

    def method_names(node):
        return [
            part.value
            for part in ast.walk(node)
            if isinstance(part, ast.Constant) and isinstance(part.value, str) and part.value.lower() in names
        ]

    methods = [n for n in ast.walk(tree) if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "METHODS"]
    assert len(methods) == 1 and isinstance(methods[0].value, ast.Dict), "METHODS is not found: update this guard"
    assert not any(isinstance(node, ast.Match) for node in ast.walk(tree))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            assert not method_names(node), f"line {node.lineno} compares with {method_names(node)}"
        if isinstance(node, ast.Dict) and node is not methods[0].value:
            keys = [key for key in node.keys if key is not None]
            assert not any(method_names(key) for key in keys), f"line {node.lineno}: a mapping keyed by method"

    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            marks = [mark for mark in ("```", "**", "## ", "|---", "| ") if mark in node.value]
            assert not marks, f"line {node.lineno}: Markdown {marks} in {node.value!r}"


def test_unicl_converter_writes_our_card(shared_dir, tmp_path):
    convert = pytest.importorskip("hf_unified.conversion.unicl")
    fixture = shared_dir / "fixtures" / "unicl-tiny-a"
    output = convert.convert_unicl_checkpoint(
        fixture / "checkpoint.pth",
        tmp_path / "converted",
        config_json=fixture / "config.json",
        tokenizer_dir=shared_dir / "fixtures" / "tokenizer-tiny-clip-bpe",
        base_model="microsoft/UniCL",
    )
    readme = (output / "README.md").read_text()
    assert CARD_MARKER in readme, "the converter fell back to its minimal card"
    metadata = metadata_load(output / "README.md")
    assert metadata["base_model"] == "microsoft/UniCL" and "converted-checkpoint" in metadata["tags"]
    assert "checkpoint.pth" in readme and "These weights were not trained by hf-unified" in readme
    assert re.search(r"\*\*Parameters:\*\* [\d.]+[KM]", readme)


@pytest.fixture(scope="module")
def shapes_model_folder(tmp_path_factory, tiny_clip_tokenizer):
    """A tiny saved UniCL folder whose training record points at a real (tiny) shapes evaluation split."""
    import torch

    from hf_unified import UniCLConfig, UniCLModel, UniCLProcessor
    from hf_unified.processing_unicl import unicl_image_processor
    from hf_unified.training.data import synthetic_data

    root = tmp_path_factory.mktemp("shapes")
    data = synthetic_data.generate(root / "data", num_train=8, num_eval=24, num_train_shards=1, image_size=32)
    torch.manual_seed(0)
    folder = root / "model"
    UniCLModel(UniCLConfig(**TOWERS, projection_dim=16)).save_pretrained(folder)
    UniCLProcessor(unicl_image_processor(32), tiny_clip_tokenizer).save_pretrained(folder)
    training_args = {
        **TRAINING_ARGS,
        "eval_data": str(data / "eval-*.tar"),
        "eval_image_column": "jpg",
        "eval_label_column": "cls",
        "class_names_file": str(data / "classes.json"),
    }
    (folder / "training_args.json").write_text(json.dumps(training_args))
    (folder / "eval_results.json").write_text(json.dumps(FLAT_EVAL))
    return folder


def run_card_examples(folder: Path) -> list:
    """What the trainer hands the card of the run recorded in `folder`: its evaluation split's images, answered."""
    from hf_unified.training.data import load_class_names
    from hf_unified.training.outputs.model_folder import CardExamples

    record = json.loads((folder / "training_args.json").read_text())
    names = load_class_names(record["class_names_file"])
    split = CardExamples(record["eval_data"], names, record["eval_image_column"], record["eval_label_column"])
    return split.widget_examples(folder)


def test_widget_shows_the_models_own_data_with_outputs_it_computed(shapes_model_folder):
    from PIL import Image
    from transformers import pipeline

    from hf_unified.training.data.synthetic_data import SHAPES

    folder = shapes_model_folder
    path = write_model_card(folder, repo_id="my-org/shapes", examples=run_card_examples(folder))
    widget = metadata_load(path)["widget"]
    assert len(widget) == 2 and len({entry["example_title"] for entry in widget}) == 2
    classifier = pipeline("zero-shot-image-classification", model=str(folder))
    for index, entry in enumerate(widget):
        assert entry["candidate_labels"] == ", ".join(SHAPES)  # the run's class names, not cat/dog photos
        assert entry["example_title"].split(" (")[0] in SHAPES and "evaluation split" in entry["example_title"]
        assert entry["src"].endswith(f"/my-org/shapes/resolve/main/widget/eval-{index}.png")
        image = Image.open(folder / "widget" / f"eval-{index}.png")  # written beside the card, uploaded with it
        answer = classifier(image, candidate_labels=list(SHAPES))
        assert entry["output"] == [{"label": a["label"], "score": round(a["score"], 4)} for a in answer]
    assert "cat" not in json.dumps(widget)


def test_evaluate_only_run_says_evaluated(tmp_path):
    saved_config("unicl", tmp_path)
    (tmp_path / "eval_results.json").write_text(json.dumps({**FLAT_EVAL, "step": 0}))
    (tmp_path / "training_args.json").write_text(
        json.dumps({**TRAINING_ARGS, "model_name_or_path": "org/base-model", "max_steps": 1000})
    )
    text = render_model_card(tmp_path).text
    training = text.split("## Training", 1)[1].split("## Evaluation", 1)[0]
    assert "evaluated, not trained" in training and "from `org/base-model`" in training
    assert "was trained with" not in text and "0 training steps" not in text and "evaluated without training" in text
    assert "max_steps" not in training and "learning_rate" not in training and "`eval_data`" in training
    assert "training_log.jsonl" not in training

    (tmp_path / "eval_results.json").write_text(json.dumps(FLAT_EVAL))  # step 200: a training run
    text = render_model_card(tmp_path).text
    assert "This model was trained with" in text and "after 200 training steps" in text


def test_code_file_list_matches_the_folder(shapes_model_folder):
    text = render_model_card(shapes_model_folder, examples=[]).text
    listed = re.search(r"\*\*Code in this repository:\*\* (.*?) \(loaded with", text).group(1).split(", ")
    on_disk = sorted(p.name for p in shapes_model_folder.glob("*.py"))
    assert listed == on_disk and {"modeling_unicl.py", "towers.py", "dual_encoder.py", "losses.py"} <= set(listed)
    assert "`handler.py` + `requirements.txt` for Inference Endpoints" in text


def test_card_never_shows_local_paths(tmp_path):
    """A card is published: settings naming local files show as local, a local starting checkpoint is no
    `base_model`, and the run's arguments and log are said to stay local. Hub ids are kept."""
    saved_config("unicl", tmp_path)
    private = "/home/alice/secret-project"
    start = str(tmp_path / "previous-run")
    (tmp_path / "previous-run").mkdir()
    training_args = {
        **TRAINING_ARGS,
        "train_data": [f"{private}/shards/train-*.tar", "org/hub-data"],
        "train_format": ["webdataset", "hub"],
        "eval_data": f"{private}/eval",
        "class_names_file": f"{private}/classes.json",
        "model_name_or_path": start,
        "output_dir": f"{private}/runs/out",
    }
    (tmp_path / "training_args.json").write_text(json.dumps(training_args))
    for step in (0, 200):  # an evaluate-only run's table lists its data and start, a training run's its sources
        (tmp_path / "eval_results.json").write_text(json.dumps({**FLAT_EVAL, "step": step}))
        card = render_model_card(tmp_path, base_model=start)
        text = str(card)
        assert private not in text and str(tmp_path) not in text
        assert card.data.base_model is None and card.data.datasets == ["org/hub-data"]
        assert {r.dataset_name for r in card.data.eval_results} == {"evaluation set (local files)"}
        assert "stay in the local output folder" in text
    assert "| `train_data` | (local files), org/hub-data |" in text

    card = render_model_card(tmp_path, base_model="org/base-model")  # a Hub start is named
    assert card.data.base_model == "org/base-model"


def test_card_names_the_model_not_the_staging_folder(tmp_path):
    """The trainer, the export and the converter write into staging folders: the title and the model-index name are
    the repo id's name when known, else the final folder's name the caller gives."""
    staging = tmp_path / ".unicl-tiny.staging"
    saved_config("unicl", staging)
    (staging / "eval_results.json").write_text(json.dumps(FLAT_EVAL))
    (staging / "training_args.json").write_text(json.dumps(TRAINING_ARGS))
    card = ModelCard.load(write_model_card(staging, model_name="unicl-tiny", examples=[]))
    assert card.text.startswith(f"{CARD_MARKER}\n\n# unicl-tiny: UniCL\n")
    assert card.data.model_name == "unicl-tiny" and "staging" not in card.content
    card = render_model_card(staging, model_name="unicl-tiny", repo_id="org/unicl-shapes", examples=[])
    assert card.data.model_name == "unicl-shapes" and "# unicl-shapes: UniCL" in card.text


def test_training_data_counters_are_training_facts_not_evaluation_results(tmp_path, caplog):
    """What the trainer records about its training data goes to the training section (shards counted, not named);
    the model-index holds the evaluations only, and an entry the card does not know is logged and left out."""
    saved_config("unicl", tmp_path)
    eval_results = {
        **FLAT_EVAL,
        "train_samples_skipped": 3,
        "train_data": {
            "samples_seen": 103,
            "samples_used": 100,
            "captions_mapped_to_labels": 0,
            "skipped": {"corrupt_image": 2, "missing_text": 1},
            "damaged_shards": {"/home/alice/shards/train-0003.tar": "truncated_shard: /home/alice/..."},
            "samples_skipped": 3,
            "skipped_fraction": 0.03,
        },
        "nonfinite_steps_skipped": 1,
        "linear_probe": {"dataset": "shapes", "top1": 0.9},
    }
    (tmp_path / "training_args.json").write_text(json.dumps(TRAINING_ARGS))
    with caplog.at_level(logging.WARNING, logger=model_card_module.__name__):
        card = render_model_card(tmp_path, eval_results=eval_results, examples=[])
    assert "eval_results['linear_probe'] is not an evaluation the card knows" in caplog.text
    assert {r.task_type for r in card.data.eval_results} == {"zero-shot-image-classification", "image-text-retrieval"}
    assert "train-data" not in card.content and "samples_seen" not in card.content and "alice" not in card.content
    training = card.text.split("## Training", 1)[1].split("## Evaluation", 1)[0]
    assert (
        "**Training data:** 100 samples used, 3 skipped as damaged (corrupt_image 2, missing_text 1); 1 damaged "
        "shard(s), read up to where they broke; 1 step(s) skipped for a non-finite loss or gradient." in training
    )
    evaluation = card.text.split("## Evaluation", 1)[1]
    assert "Train data" not in evaluation and "| Top-1 accuracy | 0.6875 |" in evaluation


@pytest.mark.parametrize("loss", sorted(set(MULTI_POSITIVE_VARIANTS) | {"sigmoid"}))
def test_the_objective_is_described_from_the_config(loss, tmp_path):
    """The card says what the config's `contrastive_loss` trains and what the logits mean: one line of
    `partials/contrastive_losses.md` per variant of `losses.MULTI_POSITIVE_VARIANTS`."""
    losses = model_card_module._environment(templates_dir()).get_template("partials/contrastive_losses.md")
    entry = losses.module.contrastive_losses[loss]
    assert set(entry) == {"loss", "logits", "scores"}
    saved_config("uniclip", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "contrastive_loss": loss}))
    text = render_model_card(tmp_path, examples=[]).text
    details = text.split("## Model details", 1)[1].split("## How to use", 1)[0]
    assert f'- **Objective** (`contrastive_loss = "{loss}"`): {entry["loss"]}.' in details
    assert f"- **Logits:** {entry['logits']}." in details and "2 image view(s) per item" in details
    assert f"probs = outputs.logits_per_image.{entry['scores']}" in text


def test_export_made_outside_the_checkout_carries_its_widget_images(shapes_model_folder, tmp_path, monkeypatch):
    """The source's card shows images it carries (`widget/`); an export run where the run's relative evaluation
    paths do not resolve carries them over, answered by the export, named after the export's final folder."""
    from PIL import Image
    from transformers import pipeline

    from hf_unified.hub.export import export_clip

    source = Path(shutil.copytree(shapes_model_folder, tmp_path / "shapes"))
    shown = metadata_load(write_model_card(source, examples=run_card_examples(source)))["widget"]  # the run's split
    assert len(shown) == 2
    training_args = json.loads((source / "training_args.json").read_text())
    (source / "training_args.json").write_text(json.dumps({**training_args, "eval_data": "data/shapes/eval-*.tar"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # `data/...` means nothing here

    output = export_clip(source, tmp_path / "shapes-clip").output_dir
    card = ModelCard.load(output / "README.md")
    assert card.data.model_name == "shapes-clip" and "# shapes-clip: UniCL as a native CLIPModel" in card.text
    widget = card.data.widget
    assert [(e["candidate_labels"], e["example_title"]) for e in widget] == [
        (e["candidate_labels"], e["example_title"]) for e in shown
    ]
    classifier = pipeline("zero-shot-image-classification", model=str(output))
    for index, entry in enumerate(widget):
        assert entry["src"].endswith(f"/{HUB_ID_PLACEHOLDER}/resolve/main/widget/eval-{index}.png")
        image = Image.open(output / "widget" / f"eval-{index}.png")
        assert image.tobytes() == Image.open(source / "widget" / f"eval-{index}.png").convert("RGB").tobytes()
        answer = classifier(image, candidate_labels=entry["candidate_labels"].split(", "))
        assert entry["output"] == [{"label": a["label"], "score": round(a["score"], 4)} for a in answer]


def test_carried_widget_images_are_read_bounded_and_converted_as_every_image(tmp_path, caplog):
    """A folder's card examples (what an export carries over) are read with `image_processing.load_image`: a thin
    image (PIL opened and decoded it whole; a 224 px resize of it costs gigabytes) and a decompression bomb are left
    out and logged, a 16-bit grey image reads as its grey (PIL's convert("RGB") made it white)."""
    from hostile_inputs import grey16_png, png_header, shapes_png, thin_png
    from huggingface_hub import ModelCardData

    from hf_unified.hub.model_card import card_examples

    images = {"thin": thin_png(), "bomb": png_header(20_000, 10_000), "grey16": grey16_png(0.46), "ok": shapes_png()}
    (tmp_path / "widget").mkdir()
    widget = []
    for name, payload in images.items():
        (tmp_path / "widget" / f"{name}.png").write_bytes(payload)
        src = f"https://huggingface.co/org/m/resolve/main/widget/{name}.png"
        widget.append({"src": src, "candidate_labels": "a, b", "example_title": name})
    (tmp_path / "README.md").write_text(f"---\n{ModelCardData(widget=widget).to_yaml()}\n---\n# m\n")

    with caplog.at_level(logging.WARNING):
        examples = {example.title: example for example in card_examples(tmp_path)}
    assert sorted(examples) == ["grey16", "ok"]
    assert examples["grey16"].image.getpixel((0, 0)) == (117, 117, 117)
    assert examples["ok"].path_in_repo == "widget/ok.png" and examples["ok"].candidate_labels == ["a", "b"]
    logged = caplog.text
    assert "widget/thin.png not readable (the image is 1000000 x 1, an aspect ratio of 1,000,000:1" in logged
    assert "widget/bomb.png not readable (the image is larger than PIL accepts" in logged


def test_a_source_card_without_widget_examples_carries_none(tmp_path):
    """A card whose metadata has no `widget` key (a run without a labelled evaluation split) carries no example."""
    from hf_unified.hub.model_card import card_examples

    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a model\n")
    assert card_examples(tmp_path) == []


def test_a_sigmoid_model_card_states_its_bias_and_what_the_pipeline_scores_are(tmp_path):
    """SigLIP's objective (`similarity_offset`, `contrastive_loss: sigmoid`): the card gives the offset and the bias it
    is, says the bias changes no zero-shot ranking, and what the pipeline's softmax scores are."""
    from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS

    saved_config("unicl", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, **OBJECTIVE_PRESETS["siglip"]}))
    text = render_model_card(tmp_path, examples=[]).text
    assert "- **Temperature and bias:** a learnable log-scale `logit_scale` and offset `logit_offset`" in text
    assert "initialised to 2.302585092994046 and 1.0 (SigLIP's bias is `b = −exp(logit_scale)·logit_offset`)" in text
    assert "the bias is the same for every pair, so it does not change a zero-shot ranking" in text
    assert "The pipeline's scores are a softmax over the candidate labels" in text
    saved_config("unicl", tmp_path)  # the softmax objective: no bias, no pipeline note
    text = render_model_card(tmp_path, examples=[]).text
    assert "Temperature and bias" not in text and "The pipeline's scores" not in text
