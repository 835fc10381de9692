"""Smoke tests of the benchmark scripts: each runs end to end on its smallest setting and returns sane figures."""

import math
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The scripts call torch.set_num_threads; leave the rest of the session as it was."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_throughput_smoke_measures_every_available_candidate_against_clipmodel():
    import throughput

    results = throughput.main(["--smoke", "--threads", "1", "--models", "(CLIP loss)", "shared"])
    towers = {row["name"]: row for row in results["towers"]}
    assert throughput.CLIP_REFERENCE in towers
    assert towers[throughput.CLIP_REFERENCE]["train_ratio"] == pytest.approx(1.0)
    assert "UniCL, CLIP towers (CLIP loss)" in towers
    assert "open_clip CLIP" not in towers  # filtered out by --models
    equal = {row["name"]: row for row in results["equal-width"]}
    assert "MS-CLIP shared (attn+MLP)" in equal
    for row in list(towers.values()) + list(equal.values()):
        assert _finite_positive(row["train_samples_per_s"]) and _finite_positive(row["infer_images_per_s"])
        assert _finite_positive(row["train_ratio"]) and _finite_positive(row["params_m"])
    # Sharing attention + MLP between the modalities must leave fewer parameters than CLIPModel at equal width.
    assert equal["MS-CLIP shared (attn+MLP)"]["params_m"] < equal[throughput.CLIP_REFERENCE]["params_m"]


def test_loss_scaling_measures_each_path_in_its_own_process_and_skips_large_dense_losses():
    import loss_scaling

    (row,) = loss_scaling.main(["--smoke", "--losses", "clip", "--global-batches", "64"])
    assert row["dense"] is not None and len(row["ratios"]) == 1
    for path in ("dense", "chunked"):
        assert _finite_positive(row[path]["seconds"]) and row[path]["peak_bytes"] >= row[path]["start_bytes"] > 0
    # UniCLIP's 3 x 64 anchors against 3 x 64 candidates are above the smoke's --max-dense-logits (2 x 64 x 64).
    args = loss_scaling.parse_args(["--smoke"])
    assert loss_scaling.paths_to_measure("uniclip", 64, 64, args) == ("chunked",)
    assert loss_scaling.paths_to_measure("clip", 64, 64, args) == ("dense", "chunked")
    assert loss_scaling.paths_to_measure("clip", 1 << 20, 1 << 20, args) == ()  # above --max-logits


def test_loss_scaling_simulated_gather_gives_the_rank_its_rows_against_all_columns():
    import loss_scaling
    import torch

    from hf_unified import losses

    real = losses.gather_with_grad
    local = torch.randn(4, 8, requires_grad=True)
    others = torch.randn(12, 8)
    with loss_scaling.SimulatedRank({"features": others, "labels": torch.zeros(12, dtype=torch.long)}):
        gathered, offset = losses.gather_with_grad(local)
        views, _ = losses.gather_with_grad(torch.randn(4, 2, 8))
    assert losses.gather_with_grad is real  # the simulation is undone
    assert gathered.shape == (16, 8) and offset == 0
    assert torch.equal(gathered[:4], local) and torch.equal(gathered[4:], others)
    assert views.shape == (16, 2, 8) and torch.equal(views[4:, 1], others)  # every view of the other ranks' items
    gathered.sum().backward()
    assert torch.equal(local.grad, torch.ones(4, 8))  # the gradient reaches this rank's rows


def test_data_pipeline_smoke_streams_augmented_batches(tmp_path):
    import data_pipeline

    tables = data_pipeline.main(["--smoke", "--data-dir", str(tmp_path), "--compile-views"])
    by_transform = {(r["transform"], r["compiled"]): r for r in tables["pipeline"]}
    assert by_transform["crop-flip", False]["shape"] == (8, 3, 32, 32)
    assert by_transform["multiview-2", False]["shape"] == (8, 2, 3, 32, 32)
    assert by_transform["batched-2", True]["shape"] == by_transform["batched-2", False]["shape"] == (8, 2, 3, 32, 32)
    assert all(_finite_positive(r["images_per_s"]) for r in tables["pipeline"])
    assert {r["kind"] for r in tables["views"]} == {"per image", "batched", "batched, compiled"}
    assert sorted(r["input_shards"] for r in tables["stream"]) == [1, 10]
    assert all(_finite_positive(rate) for r in tables["stream"] for rate in r["rows_per_cpu_s"])
    assert tables["views"] and all(_finite_positive(rate) for r in tables["views"] for rate in r["images_per_s"])


def test_data_pipeline_keeps_its_eager_rows_where_the_views_cannot_compile(tmp_path, monkeypatch, capsys):
    import data_pipeline

    def no_compiler(device, sizes):
        raise RuntimeError("Failed to find C compiler")

    monkeypatch.setattr(data_pipeline, "warm_up_compiled_jitter", no_compiler)
    argv = ["--smoke", "--data-dir", str(tmp_path), "--compile-views", "--transforms", "batched-2"]
    tables = data_pipeline.main(argv + ["--stream-input-shards", "--views-sizes", "16"])
    assert [r["compiled"] for r in tables["pipeline"]] == [False]
    assert {r["kind"] for r in tables["views"]} == {"per image", "batched"}
    assert "no compiled views on cpu (RuntimeError: Failed to find C compiler)" in capsys.readouterr().out


def test_replication_smoke_trains_and_evaluates_each_method():
    import replication

    results = replication.main(["--smoke", "--methods", "unicl", "uniclip", "msclip-shared"])
    assert set(results) == {"unicl", "uniclip", "msclip-shared"}
    for runs in results.values():
        metrics = runs[0]
        for name in ("zero_shot_top1", "i2t_R@1", "t2i_R@1"):
            assert 0.0 <= metrics[name] <= 1.0
        assert math.isfinite(metrics["final_loss"]) and _finite_positive(metrics["gflops_per_step"])
    # UniCLIP encodes two views per image, so one of its steps costs more than UniCL's at the same widths.
    assert results["uniclip"][0]["gflops_per_step"] > results["unicl"][0]["gflops_per_step"]


def test_replication_views_come_from_the_shipped_augmentation():
    """No second augmentation: UniCLIP's views are `MultiViewAugmentation` with the settings the docstring states,
    and their parameter vectors describe the crops."""
    import replication
    import torch

    from hf_unified.training.data.augmentation import MultiViewAugmentation

    augmentation = MultiViewAugmentation(num_views=2, size=16, **replication.VIEW_AUGMENTATION)
    torch.manual_seed(0)
    pairs = [augmentation(torch.rand(3, 64, 64)) for _ in range(5)]
    views, params = torch.stack([v for v, _ in pairs]), torch.stack([p for _, p in pairs])
    assert views.shape == (5, 2, 3, 16, 16) and params.shape == (5, 2, 11)
    left, top, width, height = params[..., 0], params[..., 1], params[..., 2], params[..., 3]
    # Crop boxes are whole pixels of the 64 px image: the area fraction is 0.5-1 up to that rounding.
    assert torch.all(width * height >= 0.5 - 2 / 64) and torch.all(width <= 1) and torch.all(height <= 1)
    assert torch.all(left + width <= 1 + 1e-6) and torch.all(top + height <= 1 + 1e-6)
    assert torch.all(params[..., 4] == 0) and torch.all(params[..., 10] == 0)  # no flips, no blur


def test_run_all_runs_existing_scripts_with_existing_flags():
    import re
    import shlex
    import subprocess

    commands = [
        shlex.split(line)[2:]
        for line in (BENCHMARKS / "run_all.sh").read_text().splitlines()
        if line.startswith("run ") and not line.startswith("run()")
    ]
    assert len(commands) >= 8
    for script, *arguments in commands:
        assert (BENCHMARKS.parent / script).is_file(), script
        shown = subprocess.run(
            [sys.executable, script, "--help"], cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=300
        )
        assert shown.returncode == 0, shown.stderr[-2000:]
        for flag in (word for word in arguments if word.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", shown.stdout), f"{script} has no flag {flag}"
