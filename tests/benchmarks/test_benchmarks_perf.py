"""The performance benchmarks: end_to_end.py's log parsing and step marks, both trainers end to end at tiny sizes,
and every section of the GPU run (gpu.py, gpu.sh) on the CPU, so the first GPU run does not die on a typo."""

import json
import math
import os
import subprocess
import sys

import pytest
from test_benchmarks_smoke import BENCHMARKS, _restore_torch_threads  # noqa: F401  (autouse; puts benchmarks/ on sys.path)


def test_log_windows_of_both_trainers_give_the_steady_rate(tmp_path):
    import end_to_end

    (tmp_path / "output").mkdir()
    records = [{"step": 1, "samples_per_second": 10.0}, {"step": 5, "samples_per_second": 32.0}]
    # A skipped step's record has no rate: the trainer's window (steps 6-10) runs on to the next record.
    records += [{"step": 6, "loss": None, "skipped": "non-finite loss or gradient norm"}]
    records += [{"step": 10, "samples_per_second": 64.0}]
    (tmp_path / "output" / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    ours = end_to_end.ours_windows(tmp_path, batch_size=8)
    assert [(w.first_step, w.last_step) for w in ours] == [(1, 1), (2, 5), (6, 10)]
    assert ours[1].seconds == pytest.approx(8 * 4 / 32.0) and ours[2].seconds == pytest.approx(8 * 5 / 64.0)
    # Steady after step 1: 8 samples x 9 steps over 1 s + 0.625 s.
    assert end_to_end.steady_rate(ours, 8, warmup_steps=1) == pytest.approx(72 / 1.625)

    (tmp_path / "open_clip").mkdir()
    line = "Train Epoch: 0 [{:>4}/320 (5%)] Data (t): 0.010 Batch (t): {:.3f}, 99.0/s, 99.0/s/gpu LR: 0.0001"
    (tmp_path / "open_clip" / "out.log").write_text("\n".join(line.format(n, t) for n, t in [(8, 2.0), (48, 0.25)]))
    theirs = end_to_end.open_clip_windows(tmp_path, batch_size=8)
    assert [(w.first_step, w.last_step, w.seconds) for w in theirs] == [(1, 1, 2.0), (2, 6, 1.25)]
    assert end_to_end.steady_rate(theirs, 8, warmup_steps=1) == pytest.approx(40 / 1.25)
    with pytest.raises(ValueError, match="no log window starts after step 6"):
        end_to_end.steady_rate(theirs, 8, warmup_steps=6)


def test_step_parts_split_each_step_between_its_marks():
    import end_to_end

    def step(t0, tree):  # (event, wall, thread cpu, tree cpu); cpu runs at half the wall rate
        marks = [("data_start", 0.0), ("data_end", 1.0), ("backward_start", 3.0), ("backward_end", 6.0)]
        marks += [("norm_start", 6.0), ("norm_end", 6.5), ("optimizer_start", 7.0), ("optimizer_end", 9.0)]
        return [(e, t0 + t, (t0 + t) / 2, tree if e == "data_start" else None) for e, t in marks]

    events = step(0.0, 0.0) + step(10.0, 4.0) + step(20.0, 9.0) + step(30.0, 15.0)
    parts = end_to_end.step_parts(events, warmup_steps=1)  # steps 2 and 3; step 4 is not closed
    assert parts["steps"] == 2 and parts["tree_cpu_s"] == pytest.approx(15.0 - 4.0)
    expected = {"data wait": 1, "inputs + forward + loss": 2, "backward": 3, "gradient norm": 0.5}
    expected |= {"optimizer step": 2, "rest of loop": 1.5, "step": 10}
    for part, seconds in expected.items():
        assert parts[part]["wall_ms"] == pytest.approx(1e3 * seconds), part
        assert parts[part]["cpu_ms"] == pytest.approx(1e3 * seconds / 2), part


@pytest.mark.timeout(900)
def test_end_to_end_smoke_trains_both_trainers_at_the_same_dims(tmp_path):
    import end_to_end

    outcome = end_to_end.main(["--smoke", "--work-dir", str(tmp_path), "--json", str(tmp_path / "e2e.json")])
    results = outcome["results"]
    assert set(results) == {"ours", end_to_end.REFERENCE}
    for runs in results.values():
        (run,) = runs
        assert math.isfinite(run["samples_per_s"]) and run["samples_per_s"] > 0
        assert math.isfinite(run["samples_per_cpu_s"]) and run["samples_per_cpu_s"] > 0
        assert run["parts"]["steps"] >= 3  # steps 3..5 at least (ours' last step has no next mark to close it)
        assert run["parts"]["backward"]["cpu_ms"] > 0 and run["parts"]["optimizer step"]["cpu_ms"] > 0
    assert results["ours"][0]["parts"]["gradient norm"]["wall_ms"] > 0  # ours computes it, open_clip does not
    assert results[end_to_end.REFERENCE][0]["parts"]["gradient norm"]["wall_ms"] == 0
    params = outcome["params"]  # the same towers: the same parameter count
    assert params["ours"] == pytest.approx(params["open_clip_ctx16"], rel=1e-6)
    assert json.loads((tmp_path / "e2e.json").read_text())["results"]["ours"]
    table = end_to_end.tables(outcome)
    assert "vs open_clip" in table and "whole step" in table


def test_workers_needed_counts_the_raw_stream_every_worker_reads():
    import gpu

    # 1 ms a sample without workers, of which 0.2 ms is reading the raw stream (5000 rows/s).
    pipeline = [
        {"transform": "crop-flip", "workers": 0, "images_per_cpu_s": 1000.0, "images_per_s": 1000.0},
        {"transform": "crop-flip", "workers": 8, "images_per_cpu_s": 700.0, "images_per_s": 4100.0},
    ]
    # 4000 samples/s: every worker reads 4000 rows/s (0.8 of its core) and decodes 4000 * 0.8 ms / W of them.
    assert gpu.workers_needed(4000, pipeline, "crop-flip", raw_rows_per_s=5000) == ("16", "8")
    assert gpu.workers_needed(4000, pipeline, "crop-flip") == ("4", "8")  # without the raw rate: rate / per core
    assert gpu.workers_needed(6000, pipeline, "crop-flip", raw_rows_per_s=5000)[0].startswith("none")
    # Rows measured with lanes are reported beside the one-lane rows, not mixed into the estimate.
    lanes = [{**row, "lanes": 4, "images_per_s": row["images_per_s"] * 1.5} for row in pipeline]
    assert gpu.workers_needed(4000, pipeline + lanes, "crop-flip", raw_rows_per_s=5000) == ("16", "8, 8 with 4 lanes")
    assert gpu.workers_needed(5000, pipeline + lanes, "crop-flip")[1] == "> 8, 8 with 4 lanes"
    # Rows with the views' jitter compiled (the data section's second set) stay out of both figures.
    # (Faster than the eager rows, and at fewer workers, so that either figure would change if they were counted.)
    compiled = [{**row, "compiled": True, "images_per_cpu_s": 1e6, "images_per_s": 1e6} for row in pipeline]
    compiled.append({**compiled[1], "workers": 2})
    assert gpu.workers_needed(4000, compiled + pipeline, "crop-flip", raw_rows_per_s=5000) == ("16", "8")


def test_the_gpu_data_section_passes_flags_data_pipeline_takes():
    # The smoke runs other sizes than the GPU run: its flags are checked here, without running anything.
    import data_pipeline
    import gpu

    args = data_pipeline.parse_args(gpu.data_argv(gpu.parse_args(["--stream-lanes", "1", "8"])))
    assert args.device == "cuda" and args.image_size == 224 and args.batch_size == 256
    assert args.compile_views and args.transforms == ["crop-flip", "batched-2"] and args.stream_lanes == [1, 8]


@pytest.mark.timeout(900)
def test_gpu_run_sections_all_work_on_cpu_and_the_report_reads_them(tmp_path):
    import gpu

    summary = gpu.main(["--smoke", "--sections", "throughput", "compile", "data", "--out", str(tmp_path)])
    for section in ("throughput", "compile", "data"):
        assert (tmp_path / f"{section}.json").exists(), section
    compiled = json.loads((tmp_path / "compile.json").read_text())
    names = {row["name"] for row in compiled["towers"]} | {row["name"] for row in compiled["equal-width"]}
    assert {"open_clip CLIP", "UniCLIP, 2 views (as trained)", "MS-CLIP-S layout (stem + branch)"} <= names
    reference = compiled["towers"][0]
    assert reference["train"]["flops_predicted"] == pytest.approx(1.0) and reference["train"]["gflops"] > 0
    assert "MS-CLIP-S layout (stem + branch) @ equal width" in summary
    assert "crop-flip" in summary and "batched-2" in summary
    assert (tmp_path / "summary.md").read_text() == summary


@pytest.mark.timeout(900)
def test_gpu_sh_runs_a_section_and_writes_the_summary(tmp_path):
    environment = {**os.environ, "OUT": str(tmp_path), "SECTIONS": "data", "SECTION_TIMEOUT": "800"}
    environment["PYTHON"] = sys.executable
    completed = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu.sh"), "--smoke"], env=environment, capture_output=True, text=True, timeout=880
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert (tmp_path / "data.json").exists() and "crop-flip" in (tmp_path / "summary.md").read_text()
