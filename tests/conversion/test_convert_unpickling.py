"""No pickled code runs when a converter reads a checkpoint: files that name any global outside the closed allowlist
are refused, in zip and legacy format, through the command line and the Python API of both converters."""

from __future__ import annotations

import ast
import builtins
import os
import pickle
import shlex
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy.testing._private.utils
import pytest
import torch

from hf_unified.conversion import msclip, safe_load, unicl
from hf_unified.conversion.common import load_official_checkpoint
from hf_unified.conversion.safe_load import ALLOWED_GLOBALS, UnsafeCheckpointError, pickled_globals

REPO_ROOT = Path(__file__).resolve().parents[2]
CONVERTERS = {"unicl": unicl, "msclip": msclip}


class _Reduce:
    """Pickles as a call `func(*args)`: what a malicious checkpoint asks the unpickler to run."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _payload(kind: str, marker: Path) -> tuple[_Reduce, str]:
    """A pickled call that creates `marker`, and the full name of the global it names."""
    code = f"open({str(marker)!r}, 'w').close()"
    func, args = {
        "os.system": (os.system, (f"touch {shlex.quote(str(marker))}",)),
        "builtins.exec": (builtins.exec, (code,)),
        "builtins.eval": (builtins.eval, (code,)),
        "numpy-runstring": (numpy.testing._private.utils.runstring, (code, {})),
        "subprocess.Popen": (subprocess.Popen, ([sys.executable, "-c", code],)),
    }[kind]
    return _Reduce(func, args), f"{func.__module__}.{func.__qualname__}"


PAYLOADS = ["os.system", "builtins.exec", "builtins.eval", "numpy-runstring", "subprocess.Popen"]


def _save(content, path: Path, file_format: str) -> Path:
    torch.save(content, path, _use_new_zipfile_serialization=file_format == "zip")
    return path


def _attack_file(tmp_path: Path, kind: str, layout: str, file_format: str) -> tuple[Path, Path, str]:
    """(checkpoint, marker, refused global). `nested`: the payload hides in a legitimate-looking UniCL file."""
    marker = tmp_path / "marker"
    payload, name = _payload(kind, marker)
    content = payload
    if layout == "nested":
        content = {"model": OrderedDict(logit_scale=torch.ones(())), "config": {"TRAIN": {"LR": payload}}}
    return _save(content, tmp_path / f"{kind}-{layout}.pth", file_format), marker, name


@pytest.mark.parametrize("kind", PAYLOADS)
def test_payloads_run_under_full_pickle(kind, tmp_path):
    """The attack files are live: a full unpickler runs them (so the marker checks below can fail)."""
    path, marker, _ = _attack_file(tmp_path, kind, "bare", "zip")
    result = torch.load(path, weights_only=False)
    if isinstance(result, subprocess.Popen):
        result.wait(timeout=120)
    assert marker.exists()


def _assert_refusal_line(message: str, path: Path, name: str) -> None:
    assert str(path) in message and name in message, message
    assert "weights_only=False" not in message and "Traceback" not in message
    assert len(message.strip().splitlines()) == 1, message


@pytest.mark.parametrize("file_format", ["zip", "legacy"])
@pytest.mark.parametrize("layout", ["bare", "nested"])
@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("method", sorted(CONVERTERS))
def test_cli_refuses_payload(method, kind, layout, file_format, tmp_path, capsys):
    path, marker, name = _attack_file(tmp_path, kind, layout, file_format)
    exit_code = CONVERTERS[method].main(["--checkpoint", str(path), "--output", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert exit_code == 1
    assert captured.err.startswith("error: ")
    _assert_refusal_line(captured.err, path, name)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("file_format", ["zip", "legacy"])
@pytest.mark.parametrize("layout", ["bare", "nested"])
@pytest.mark.parametrize("kind", PAYLOADS)
@pytest.mark.parametrize("method", sorted(CONVERTERS))
def test_python_api_refuses_payload(method, kind, layout, file_format, tmp_path):
    path, marker, name = _attack_file(tmp_path, kind, layout, file_format)
    convert = {"unicl": unicl.convert_unicl_checkpoint, "msclip": msclip.convert_msclip_checkpoint}[method]
    with pytest.raises(UnsafeCheckpointError) as error:
        convert(path, tmp_path / "out")
    _assert_refusal_line(str(error.value), path, name)
    assert not marker.exists()


@pytest.mark.parametrize("file_format", ["zip", "legacy"])
def test_torch_enforces_the_same_allowlist(file_format, tmp_path, monkeypatch):
    """Were the opcode scan to miss a global, torch's weights_only unpickler, given only the allowlist, still refuses
    it, and the message still gives no advice to turn weights_only off."""
    path, marker, _ = _attack_file(tmp_path, "builtins.exec", "nested", file_format)
    monkeypatch.setattr(safe_load, "pickled_globals", lambda _: set())
    with pytest.raises(UnsafeCheckpointError) as error:
        load_official_checkpoint(path)
    assert str(path) in str(error.value) and "exec" in str(error.value)
    assert "weights_only=False" not in str(error.value)
    assert not marker.exists()


def test_protocol_4_pickle_is_refused(tmp_path):
    """A plain pickle of protocol 4+ names globals with STACK_GLOBAL, which torch.save never writes."""
    marker = tmp_path / "marker"
    payload, _ = _payload("os.system", marker)
    path = tmp_path / "protocol4.pth"
    path.write_bytes(pickle.dumps({"model": payload}, protocol=4))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|STACK_GLOBAL"):
        load_official_checkpoint(path)
    assert not marker.exists()


def test_python_dash_m_refuses_payload(tmp_path):
    """The console-script path (`python -m`): exit code 1, one error line, no marker."""
    path, marker, name = _attack_file(tmp_path, "numpy-runstring", "nested", "zip")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hf_unified.conversion.unicl",
            "--checkpoint",
            str(path),
            "--output",
            str(tmp_path / "out"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    _assert_refusal_line(result.stderr, path, name)
    assert not marker.exists()


@pytest.mark.parametrize("file_format", ["zip", "legacy"])
def test_release_style_extras_load(file_format, tmp_path, monkeypatch):
    """numpy scalars and arrays, OrderedDict and a yacs CfgNode beside the weights are data: the state dict is read
    (without importing yacs) and the extras are ignored."""
    import types

    import numpy as np

    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
    monkeypatch.setitem(sys.modules, "yacs.config", module)
    weights = OrderedDict(logit_scale=torch.tensor(2.5), text_projection=torch.randn(4, 3))
    config = CfgNode(MODEL=CfgNode(NAME="unicl"))
    vars(config).update(__immutable__=True, __deprecated_keys__=set())
    content = {
        "model": weights,
        "config": config,
        "epoch": np.int64(3),
        "max_accuracy": np.float64(81.1),
        "history": np.arange(4, dtype=np.float32),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999)}]},
    }
    path = _save(content, tmp_path / "release.pth", file_format)
    monkeypatch.delitem(sys.modules, "yacs.config")  # loading must not need yacs
    state_dict = load_official_checkpoint(path)
    assert "yacs.config" not in sys.modules
    assert state_dict.keys() == weights.keys()
    assert all(torch.equal(state_dict[k], weights[k]) for k in weights)


@pytest.mark.parametrize("name", ["unicl-tiny-a", "msclip-tiny-b"])
def test_fixture_checkpoints_need_only_tensor_globals(name, shared_dir):
    found = pickled_globals(shared_dir / "fixtures" / name / "checkpoint.pth")
    assert found <= ALLOWED_GLOBALS
    assert found >= {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}


def test_allowlist_is_closed_by_full_name():
    """Every entry is a full name of one object: no module prefix, no wildcard."""
    assert all("." in name and not name.endswith((".", "*")) for name in ALLOWED_GLOBALS)
    assert not any(name.startswith(("os.", "posix.", "subprocess.", "builtins.e")) for name in ALLOWED_GLOBALS)
    assert "numpy.testing._private.utils.runstring" not in ALLOWED_GLOBALS


def _calls(tree: ast.AST, dotted: str):
    module, attribute = dotted.rsplit(".", 1)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == attribute
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == module
        ):
            yield node


def test_only_the_converters_call_torch_load_and_always_weights_only():
    """Across the package: `torch.load(` only in hf_unified/conversion/, each with `weights_only=True`; no
    `pickle.load` / `pickle.loads` / `pickle.Unpickler`, no `numpy.load(allow_pickle=True)`."""
    package = REPO_ROOT / "hf_unified"
    torch_loads = []
    for path in sorted(package.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        relative = path.relative_to(REPO_ROOT).as_posix()
        for call in _calls(tree, "torch.load"):
            torch_loads.append(relative)
            assert relative.startswith("hf_unified/conversion/"), f"{relative}:{call.lineno} calls torch.load"
            weights_only = [k.value for k in call.keywords if k.arg == "weights_only"]
            assert weights_only and isinstance(weights_only[0], ast.Constant) and weights_only[0].value is True, (
                f"{relative}:{call.lineno}: torch.load without weights_only=True"
            )
        for name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            assert not list(_calls(tree, name)), f"{relative} calls {name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("pickle", "_pickle", "dill", "cloudpickle"):
                imported = {alias.name for alias in node.names}
                assert not imported & {"load", "loads", "Unpickler"}, f"{relative} imports {imported} from pickle"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert isinstance(node.value, ast.Constant) and node.value.value is False, f"{relative}: allow_pickle"
    assert torch_loads, "the scan found no torch.load at all: it is not looking at the package"
