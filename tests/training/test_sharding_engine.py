"""The accelerate launch configurations parse, and the engine check refuses what cannot run here (no GPU): the
FSDP and DeepSpeed launches themselves need GPUs and have not been run by this project."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from hf_unified.training.engine import launch, sharding
from hf_unified.training.engine.steps import build_step

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "training" / "accelerate"


@pytest.mark.parametrize(
    "name, engine, processes, machines",
    [
        ("fsdp.yaml", DistributedType.FSDP, 8, 1),
        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED, 8, 1),
        ("deepspeed_zero3.yaml", DistributedType.DEEPSPEED, 8, 1),
        ("multi_node.yaml", DistributedType.MULTI_GPU, 16, 2),
    ],
)
def test_accelerate_configs_parse(name, engine, processes, machines):
    config = load_config_from_file(str(CONFIGS / name))
    assert (config.distributed_type, config.num_processes, config.num_machines) == (engine, processes, machines)
    if engine == DistributedType.FSDP:
        assert config.fsdp_config["fsdp_version"] == 2
        assert config.fsdp_config["fsdp_auto_wrap_policy"] == "NO_WRAP"
        assert config.fsdp_config["fsdp_activation_checkpointing"] is False
    if engine == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] == int(name[-6])
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1


def test_fsdp_launch_is_refused_on_a_machine_without_gpu(tmp_path):
    """`accelerate launch` with the FSDP file sets up DDP on this CPU machine (accelerate says nothing); the check
    names the mismatch."""
    script = tmp_path / "check.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(REPO_ROOT)!r})
            from accelerate import Accelerator
            from hf_unified.training.engine.launch import check_engine
            accelerator = Accelerator(cpu=True)
            print("accelerate set up", accelerator.distributed_type)
            check_engine(accelerator)
            """
        )
    )
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp.yaml")]
    result = subprocess.run(
        [*command, "--num_processes", "1", str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert result.returncode != 0
    assert "accelerate set up DistributedType.MULTI_CPU" in result.stdout
    assert "EngineError: the launch configuration asks for FSDP" in result.stderr
    assert "run the FSDP configuration on GPUs" in result.stderr


@pytest.mark.parametrize("stage", ["2", "3"])
def test_deepspeed_launch_is_refused_without_gpu(stage):
    """accelerate itself refuses to launch the DeepSpeed files here (DeepSpeed is not installed); what it would
    pass to the processes is refused by the check too."""
    environ = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": stage}
    assert launch.requested_engine(environ) == "DEEPSPEED"
    with pytest.raises(launch.EngineError, match=r"asks for DEEPSPEED .* but accelerate set up single process"):
        launch.check_engine(Accelerator(cpu=True), environ=environ)


def test_plain_launches_are_described():
    accelerator = Accelerator(cpu=True)
    assert launch.requested_engine({}) is None
    assert launch.check_engine(accelerator, build_step("full_batch"), environ={}) == "single process (cpu)"


def fake_accelerator(kind: DistributedType, **state) -> SimpleNamespace:
    """What accelerate builds on GPUs, for the checks that need such a state (not constructible on a CPU)."""
    return SimpleNamespace(
        distributed_type=kind,
        state=SimpleNamespace(distributed_type=kind, backend="nccl", **state),
        num_processes=8,
        device="cuda:0",
        mixed_precision="bf16",
    )


def test_fsdp_version_1_auto_wrap_and_accelerate_activation_checkpointing_are_refused():
    environ = {"ACCELERATE_USE_FSDP": "true"}
    version_1 = fake_accelerator(DistributedType.FSDP, fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=1))
    with pytest.raises(launch.EngineError, match="FSDP version 1 is not supported: set `fsdp_version: 2`"):
        launch.check_engine(version_1, environ=environ)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    with pytest.raises(launch.EngineError, match="set `fsdp_auto_wrap_policy: NO_WRAP`"):
        launch.check_engine(fake_accelerator(DistributedType.FSDP, fsdp_plugin=plugin), environ=environ)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, activation_checkpointing=True)
    with pytest.raises(launch.EngineError, match="pass --gradient_checkpointing instead"):
        launch.check_engine(fake_accelerator(DistributedType.FSDP, fsdp_plugin=plugin), environ=environ)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    description = launch.check_engine(
        fake_accelerator(DistributedType.FSDP, fsdp_plugin=plugin), build_step("full_batch"), environ
    )
    assert description == "FSDP2, 8 processes (nccl, cuda:0), bf16 mixed precision"


def test_full_batch_with_deepspeed_is_refused():
    deepspeed = fake_accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=SimpleNamespace(zero_stage=3))
    environ = {"ACCELERATE_USE_DEEPSPEED": "true"}
    assert launch.check_engine(deepspeed, build_step("micro_batch"), environ) == (
        "DeepSpeed ZeRO-3, 8 processes (nccl, cuda:0), bf16 mixed precision"
    )
    with pytest.raises(launch.EngineError, match="full_batch is not supported with DeepSpeed"):
        launch.check_engine(deepspeed, build_step("full_batch"), environ)


def test_the_engine_check_asks_the_step_strategy_that_runs():
    """Not the accumulation mode's string: a strategy of one's own says itself whether DeepSpeed can run it."""

    class ExactStep:
        name = "exact_on_the_side"
        deepspeed_unsupported = "it gathers the whole batch outside DeepSpeed's engine"

        def __call__(self, model, micro_batches, accelerator):
            raise AssertionError("not run by the check")

    deepspeed = fake_accelerator(DistributedType.DEEPSPEED, deepspeed_plugin=SimpleNamespace(zero_stage=2))
    environ = {"ACCELERATE_USE_DEEPSPEED": "true"}
    with pytest.raises(
        launch.EngineError,
        match=r"exact_on_the_side is not supported with DeepSpeed \(it gathers the whole batch outside",
    ):
        launch.check_engine(deepspeed, ExactStep(), environ)
    assert launch.check_engine(deepspeed, None, environ).startswith("DeepSpeed ZeRO-2")


def test_fsdp_kwargs_follow_the_plugin():
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy

    policy = MixedPrecisionPolicy()
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=False)
    plugin.mixed_precision_policy = policy
    kwargs = sharding.fsdp_kwargs(SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    assert kwargs["reshard_after_forward"] is False
    assert kwargs["mp_policy"] is policy
    assert type(kwargs["offload_policy"]) is OffloadPolicy  # the base class: no offloading


def test_models_are_sharded_only_for_an_fsdp2_engine():
    model = torch.nn.Linear(2, 2)
    assert sharding.shard_for_engine(model, Accelerator(cpu=True)) is model
