"""The README tells the truth: its ```python blocks run as written, in order, offline, in a fresh folder; its
```py blocks (which need a Hub download) at least compile; the commands it shows name scripts and flags that exist."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def test_python_blocks_run_as_written(tmp_path):
    code = "\n\n".join(blocks("python"))
    assert "pipeline(" in code and "save_pretrained" in code  # the quick start is there
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "'label': 'square'" in result.stdout or "'label': 'circle'" in result.stdout


@pytest.mark.parametrize("index", range(len(blocks("py"))))
def test_download_snippets_compile(index):
    compile(blocks("py")[index], f"README.md py block {index}", "exec")


def _commands() -> list[list[str]]:
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line.replace("[", "").replace("]", "")))
    return commands


SCRIPTS = {
    "training/train.py": [sys.executable, "training/train.py"],
    "training/push_to_hub.py": [sys.executable, "training/push_to_hub.py"],
    "hf-unified-convert-unicl": [sys.executable, "-m", "hf_unified.conversion.unicl"],
    "hf-unified-convert-msclip": [sys.executable, "-m", "hf_unified.conversion.msclip"],
}


def test_shown_commands_use_existing_scripts_and_flags():
    checked = 0
    helps: dict[str, str] = {}
    for command in _commands():
        script = next((word for word in command if word in SCRIPTS or word.endswith(".py")), None)
        if script is None or script not in SCRIPTS:
            if script is not None:
                assert (ROOT / script).is_file(), f"README runs {script}, which does not exist"
            continue
        if script not in helps:
            result = subprocess.run(
                [*SCRIPTS[script], "--help"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert result.returncode == 0, result.stderr[-2000:]
            helps[script] = result.stdout
        for word in command[command.index(script) + 1 :]:
            if word.startswith("--"):
                flag = word.split("=")[0]
                assert re.search(rf"{re.escape(flag)}\b", helps[script]), f"{script} has no flag {flag}"
                checked += 1
    assert checked > 5
