"""Smoke and unit tests of the comparison and fine-tune-from-CLIP studies (`benchmarks/comparison.py`,
`benchmarks/finetune_from_clip.py`) and of the study harness in `benchmarks/studies.py`."""

import json
import math

import pytest
from test_benchmarks_smoke import _restore_torch_threads  # noqa: F401  (autouse; also puts benchmarks/ on sys.path)


@pytest.fixture(scope="module")
def comparison_results(tmp_path_factory):
    """One smoke comparison on shapes: UniCLIP and MS-CLIP separate (which brings MS-CLIP-S, whose parameter count
    it matches, and CLIP, the reference), 2 seeds, evaluated at steps 2 and 4."""
    import comparison

    folder = tmp_path_factory.mktemp("comparison")
    argv = ["--smoke", "--datasets", "shapes", "--methods", "uniclip", "msclip-separate", "--seeds", "0", "1"]
    results = comparison.main([*argv, "--output", str(folder / "results.json"), "--figures", str(folder)])
    return results, folder


def test_comparison_smoke_trains_each_method_and_evaluates_over_the_run(comparison_results):
    results, folder = comparison_results
    assert results["methods"] == ["clip", "uniclip", "ms-clip-s", "msclip-separate"]
    runs = {(r["method"], r["seed"]): r for r in results["runs"]}
    assert set(runs) == {(m, s) for m in results["methods"] for s in (0, 1)}
    for run in runs.values():
        assert [record["step"] for record in run["history"]] == [2, 4]  # eval_steps 2 of 4, then the final one
        for record in run["history"]:
            for key in ("zero_shot_top1_accuracy", "zero_shot_seen_prompts_top1", "held_out_classes_top1"):
                assert 0.0 <= record[key] <= 1.0
            assert 0.0 <= record["linear_probe_top1"] <= 1.0 and 0.0 <= record["image_to_text_R@1"] <= 1.0
        assert all(math.isfinite(loss) for _, loss in run["losses"])
    # UniCLIP encodes two views per image: one of its steps costs more than CLIP's at the same widths.
    assert runs["uniclip", 0]["gflops_per_step"] > runs["clip", 0]["gflops_per_step"]
    # MS-CLIP separate is sized to MS-CLIP-S's parameter count (a narrower stack: sharing saves parameters).
    shared, separate = runs["ms-clip-s", 0], runs["msclip-separate", 0]
    assert separate["width"] < shared["width"] == 32
    assert abs(separate["params"] - shared["params"]) < 0.15 * shared["params"]
    # UniCLIP's learnt similarity is recorded per domain pair; CLIP has one temperature and no offset.
    assert (
        len(runs["uniclip", 0]["similarity"]["logit_offset"]) == 3
        and "logit_offset" not in runs["clip", 0]["similarity"]
    )
    saved = json.loads((folder / "results.json").read_text())
    assert len(saved["runs"]) == len(results["runs"])
    assert (folder / "comparison_shapes.png").stat().st_size > 10_000


def test_comparison_tables_and_figures_come_back_from_the_saved_results(comparison_results, tmp_path, capsys):
    import comparison

    _, folder = comparison_results
    comparison.main(["--from-results", str(folder / "results.json"), "--figures", str(tmp_path)])
    printed = capsys.readouterr().out
    assert (
        "comparison on shapes (test split), step 2 of 4" in printed and "shapes (test split), step 4 of 4" in printed
    )
    assert "same-seed difference to clip at step 4" in printed
    assert "| msclip-separate |" in printed and "held-out classes (36-way)" in printed
    assert (tmp_path / "comparison_shapes.png").is_file()


def test_comparison_refuses_budgets_it_does_not_evaluate():
    import comparison

    with pytest.raises(SystemExit):
        comparison.parse_args(["--smoke", "--budgets", "3"])


def test_the_choices_study_runs_on_the_validation_split_only(capsys):
    import comparison

    assert comparison.parse_args(["--smoke", "--study", "uniclip-choices"]).split == "validation"
    assert comparison.parse_args(["--smoke"]).split == "test"
    with pytest.raises(SystemExit):
        comparison.parse_args(["--smoke", "--study", "uniclip-choices", "--split", "test"])
    assert "runs on --split validation only" in capsys.readouterr().err


def test_a_budget_matched_run_is_longer_by_its_multiplier_and_read_at_the_matching_steps():
    import comparison
    import studies

    settings = studies.RunSettings(steps=600, eval_steps=100)
    longer = comparison.scaled_steps(settings, 1.55)
    assert (longer.steps, longer.eval_steps) == (930, 155)  # as many evaluations, each run its own whole schedule
    saved = {"steps": 600, "eval_steps": 100}
    assert [comparison.scaled_step(b, saved, 1.55) for b in (200, 600)] == [310, 930]
    assert comparison.scaled_step(200, saved, 1.0) == 200 and comparison.scaled_steps(settings, 1.0) is settings
    with pytest.raises(ValueError, match="budget must be one of"):
        comparison.Method("towers", "clip", budget_of="clip", budget="joules")


@pytest.fixture(scope="module")
def matched_results(tmp_path_factory):
    """A smoke comparison on digits of the budget-matched methods: CLIP with patch dropout given CLIP's wall time,
    CLIP given UniCLIP's FLOPs (which bring CLIP and UniCLIP)."""
    import comparison

    folder = tmp_path_factory.mktemp("matched")
    argv = ["--smoke", "--datasets", "digits", "--methods", "clip+patch-dropout", "clip@uniclip-flops", "--seeds", "0"]
    results = comparison.main([*argv, "--output", str(folder / "results.json"), "--no-figures"])
    return results


def test_budget_matched_methods_get_the_measured_ratio_of_steps(matched_results):
    results = matched_results
    assert results["methods"] == ["clip", "clip+patch-dropout", "uniclip", "clip@uniclip-flops"]
    matched = results["budgets_matched"]["digits"]
    runs = {r["method"]: r for r in results["runs"]}
    flops = matched["clip@uniclip-flops"]
    assert flops["unit"] == "flops" and flops["multiplier"] == pytest.approx(flops["matched"] / flops["own"])
    # The calibration counts the steps the runs count: UniCLIP's two views cost more than CLIP's one image.
    assert flops["matched"] == pytest.approx(runs["uniclip"]["gflops_per_step"])
    assert flops["own"] == pytest.approx(runs["clip"]["gflops_per_step"]) and flops["multiplier"] > 1.2
    seconds = matched["clip+patch-dropout"]
    assert seconds["unit"] == "seconds" and seconds["multiplier"] > 0 and math.isfinite(seconds["multiplier"])
    assert matched["clip"] == {"multiplier": 1.0}
    for name in ("clip+patch-dropout", "clip@uniclip-flops"):
        multiplier = matched[name]["multiplier"]
        every = max(1, round(2 * multiplier))
        assert runs[name]["step_multiplier"] == multiplier
        assert [r["step"] for r in runs[name]["history"]] == [every, 2 * every]  # steps 2 and 4 of the study
    assert [r["step"] for r in runs["clip"]["history"]] == [2, 4]
    assert all(run["split"] == "test" for run in results["runs"])


def test_the_tables_read_budget_matched_runs_at_their_steps_and_give_the_equal_compute_reading(matched_results):
    import comparison

    text = comparison.tables(matched_results)
    assert "clip@uniclip-flops (" in text and "x steps)" in text
    assert "equal training FLOPs: same-seed difference to CLIP given the method's FLOPs up to its step 4" in text
    assert "| uniclip vs clip@uniclip-flops |" in text
    assert "intervals, none corrected for multiple comparisons" in text


def test_paired_difference_is_the_t_interval_of_the_same_seed_differences():
    from common import paired_difference, percent_difference
    from scipy import stats

    mean, half = paired_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.5])  # differences 0.1, 0.1, 0.2
    assert mean == pytest.approx(0.4 / 3)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) * (1 / 300) ** 0.5 / 3**0.5)
    assert math.isnan(paired_difference([0.5], [0.4])[1])
    assert percent_difference([0.5, 0.6, 0.7], [0.4, 0.5, 0.5]).startswith("+13.3 [")
    with pytest.raises(ValueError, match="equally long"):
        paired_difference([0.5, 0.6], [0.4])


def test_msclip_s_layout_is_the_released_one_at_vit_b32_and_the_shipped_tiny_config_at_the_study_sizes():
    import common
    import yaml

    from hf_unified import MSCLIPConfig

    released = MSCLIPConfig()  # the released MS-CLIP-S ViT-B/32
    layout = common.msclip_s_layout(width=768, layers=12, image_size=224, patch_size=32)
    assert layout == {key: getattr(released, key) for key in layout}
    layout = common.msclip_s_layout(width=64, layers=4, image_size=32, patch_size=8)
    shipped = yaml.safe_load((common.REPO_ROOT / "training/configs/msclip-tiny.yaml").read_text())["model_config"]
    assert layout == {key: shipped[key] for key in layout}
    sizes = dict(hidden_size=64, vision_num_attention_heads=2, text_num_attention_heads=2, num_hidden_layers=4)
    MSCLIPConfig.from_preset("ms-clip-s", image_size=32, patch_size=8, **sizes, **layout)
    with pytest.raises(ValueError, match="at least 2 layers"):
        common.msclip_s_layout(width=64, layers=1, image_size=32, patch_size=8)


def test_study_data_zero_shot_prompts_and_held_out_classes_are_unseen_in_training():
    import studies

    from hf_unified.training.data import synthetic_data

    shapes = studies.shapes_data(num_train=300, num_eval=120, image_size=16)
    digits = studies.digits_data(num_eval=50, image_size=16, num_train=100)
    assert len(digits.train.images) == 100 and len(digits.eval.images) == 50
    for data in (shapes, digits):
        seen = set(data.train.captions) | {t.format(n) for n in data.class_names for t in data.train_templates}
        unseen = {t.format(n) for n in data.class_names for t in data.eval_templates}
        assert not seen & unseen
    task = shapes.held_out
    assert len(task.class_names) == 36 and len(task.labels) == len(shapes.eval.images)
    held_out = {f"{colour} {shape}" for shape, colour in synthetic_data.HELD_OUT_COMBINATIONS}
    members = [index for index, label in enumerate(task.labels) if label >= 0]
    assert 20 < len(members) < 100  # about half of the evaluation images
    assert {task.class_names[task.labels[i]] for i in members} == held_out
    for index in members:  # the class is the image's own shape
        assert task.class_names[task.labels[index]].endswith(synthetic_data.SHAPES[shapes.eval.labels[index]])
    assert not any(name in caption for name in held_out for caption in shapes.train.captions)
    assert digits.held_out is None and set(digits.tasks()) == {"zero_shot_seen_prompts"}


def test_validation_splits_are_disjoint_from_training_and_test_which_stay_as_they_were():
    import studies

    def pixels(split):
        return [image.tobytes() for image in split.images]

    shapes = {split: studies.shapes_data(100, 60, 16, split=split) for split in ("test", "validation")}
    digits = {
        split: studies.digits_data(num_eval=50, image_size=16, num_train=200, num_validation=40, split=split)
        for split in ("test", "validation")
    }
    for data in (shapes, digits):
        test, validation = data["test"], data["validation"]
        assert (test.split, validation.split) == ("test", "validation")
        assert pixels(test.train) == pixels(validation.train)  # one training split whatever is evaluated
        assert not set(pixels(validation.eval)) & (set(pixels(test.eval)) | set(pixels(test.train)))
    assert len(digits["validation"].eval.images) == 40 and len(digits["test"].eval.images) == 50
    # The test split and the training split are those of the study before it had a validation split.
    before = studies.shapes_data(100, 60, 16)
    assert pixels(before.eval) == pixels(shapes["test"].eval) and shapes["validation"].held_out.labels.count(-1) < 60
    without_validation = studies.digits_data(num_eval=50, image_size=16, num_train=200)
    assert pixels(without_validation.eval) == pixels(digits["test"].eval)
    with pytest.raises(ValueError, match="split must be one of"):
        studies.shapes_data(10, 10, 16, split="train")
    with pytest.raises(ValueError, match="needs num_validation > 0"):
        studies.digits_data(num_eval=50, image_size=16, split="validation")


def test_finetune_from_clip_smoke_starts_from_the_exported_clip_model(tmp_path):
    import finetune_from_clip
    from transformers import CLIPModel

    results = finetune_from_clip.main(
        ["--smoke", "--seeds", "0", "--objectives", "unicl labels", "uniclip views", "--output", str(tmp_path)]
        + ["--lora-objectives", "unicl labels", "--lora-ranks", "4"]
    )
    names = [run["method"] for run in results["runs"]]
    assert names == [
        finetune_from_clip.START,
        "continue clip",
        "unicl labels",
        "uniclip views",
        "unicl labels, LoRA r4",
    ]
    costs = results["step_costs"]["unicl labels"]  # full ("0") vs LoRA: fewer trainable parameters, less AdamW state
    assert 0 < costs["4"]["trainable"] < costs["0"]["trainable"] == costs["0"]["total"]
    assert 0 < costs["4"]["optimizer_mib"] < costs["0"]["optimizer_mib"]
    clip = CLIPModel.from_pretrained(tmp_path / "clip-seed0")  # the pre-training run's export, a plain CLIPModel
    assert clip.config.text_config.eos_token_id == 49407
    for run in results["runs"]:
        final = run["history"][-1]
        assert final["step"] == (4 if run["method"] == finetune_from_clip.START else 2)
        assert 0.0 <= final["zero_shot_top1_accuracy"] <= 1.0 and 0.0 <= final["linear_probe_top1"] <= 1.0
    assert (tmp_path / "results.json").is_file()


def test_a_stopped_run_gives_its_final_tables_from_its_printed_lines(tmp_path):
    """A run stopped before its end writes no JSON; `--from-log` reads each finished run's printed line (and the
    budget matching's multipliers) into the step-600 tables."""
    import comparison

    lines = ["comparison (full): 6 runs of 600 steps in 2 process(es), 1 torch thread(s) each"]
    lines.append("  shapes: clip@uniclip-flops gets uniclip's flops per step: 3.833 / 2.473 = 1.550x its steps")
    for seed, (clip, uniclip, matched) in enumerate([(0.40, 0.55, 0.45), (0.38, 0.60, 0.50)]):
        lines.append(f"  shapes clip seed {seed}: zero-shot {clip:.3f}, probe 0.400, i2t R@1 0.100 (90 s)")
        lines.append(f"  shapes uniclip seed {seed}: zero-shot {uniclip:.3f}, probe 0.500, i2t R@1 0.150 (120 s)")
        lines.append(
            f"  shapes clip@uniclip-flops seed {seed}: zero-shot {matched:.3f}, probe 0.450, i2t R@1 0.1 (140 s)"
        )
    log = tmp_path / "full.log"
    log.write_text("\n".join(lines) + "\n")
    results = comparison.results_from_log(log, "comparison", "full")
    runs = {(r["method"], r["seed"]): r for r in results["runs"]}
    assert results["methods"] == ["clip", "uniclip", "clip@uniclip-flops"] and len(runs) == 6
    assert runs["clip@uniclip-flops", 0]["history"] == [
        {"step": 930, "zero_shot_top1_accuracy": 0.45, "linear_probe_top1": 0.45, "image_to_text_R@1": 0.1}
    ]
    text = comparison.tables(results)
    assert "| uniclip | +18.5 [" in text  # (0.15 + 0.22) / 2 over the two seeds
    assert "| uniclip vs clip@uniclip-flops | +10.0 [" in text  # equal FLOPs: (0.10 + 0.10) / 2
