"""The front pages tell the truth: README.md, docs/*.md and the benchmarks' pages.

- every ```python block runs alone, as written, offline, in a fresh folder (each is a newcomer's copy-paste);
- every ```py block (they need a Hub download or a trained model) at least compiles;
- every command of a ```bash block names scripts, console scripts, modules, configs and files that exist, with flags
  the script's `--help` lists;
- every command of the benchmarks' index names a benchmark script that exists and flags it defines;
- every relative link points to a file that exists (and a heading that exists, for `#anchors`).

Not run: the ```bash commands themselves (training runs, pushes to the Hub, downloads, `pip install`): the training
tests run the same configs at tiny sizes, the Hub tests push to the loopback Hub.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
BENCHMARK_PAGES = sorted((ROOT / "benchmarks").glob("*.md"))


def blocks(language: str, page: Path = README) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def labelled_blocks(language: str, pages=PAGES) -> list:
    return [
        pytest.param(page, index, block, id=f"{page.relative_to(ROOT)}-{index}")
        for page in pages
        for index, block in enumerate(blocks(language, page))
    ]


def test_the_readme_is_one_screen_to_a_trained_model():
    text = README.read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[:4] == ["Install", "Quick start", "Train", "Test"], sections
    assert len(text.splitlines()) <= 100, "the README is the front page: details go into docs/"
    # The install and test commands CI runs (.ci/run installs as the README says and runs its test command).
    assert 'pip install -e ".[dev]"\npython -m pytest -q\n' in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]"' in ci and "python -m pytest -q" in ci


@pytest.mark.parametrize(("page", "index", "code"), labelled_blocks("python"))
def test_python_blocks_run_alone_as_written(page, index, code, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    # A config that disagrees with its tokenizer (e.g. CLIP's bos id 49406 in a 300-token vocabulary) warns.
    assert "token_id" not in result.stderr, result.stderr[-2000:]
    if page == README:  # the quick start: a model saved, loaded by the Auto classes, answering in the pipeline
        assert "pipeline(" in code and "save_pretrained" in code
        assert "'label': 'square'" in result.stdout or "'label': 'circle'" in result.stdout


@pytest.mark.parametrize(("page", "index", "code"), labelled_blocks("py"))
def test_download_snippets_compile(page, index, code):
    compile(code, f"{page.name} py block {index}", "exec")


def _commands(pages=PAGES) -> list[list[str]]:
    commands = []
    for page in pages:
        for block in blocks("bash", page):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split("  #")[0].strip()
                if line and not line.startswith("#"):
                    commands.append(shlex.split(line.replace("[", "").replace("]", "")))
    return commands


def _console_scripts() -> dict[str, list[str]]:
    """`[project.scripts]`, each as the command pip's wrapper runs."""
    section = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    scripts = {}
    for name, target in re.findall(r'^([\w-]+) = "([\w.]+:\w+)"$', section.group(1), re.M):
        module, function = target.split(":")
        wrapper = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"
        scripts[name] = [sys.executable, "-c", wrapper]
    # One parser (tests/test_console_scripts.py compares their --help): the script's is torch-free, so faster.
    scripts["hf-unified-train"] = [sys.executable, "training/train.py"]
    return scripts


SCRIPTS = {
    "training/train.py": [sys.executable, "training/train.py"],
    "training/push_to_hub.py": [sys.executable, "training/push_to_hub.py"],
    **_console_scripts(),
}


def test_shown_commands_use_existing_scripts_modules_files_and_flags():
    checked = 0
    helps: dict[str, str] = {}
    for command in _commands():
        for word in command:  # configs, launcher configs, sbatch scripts: the files a command names
            if re.match(r"(training|benchmarks|docs|model_cards)/", word) and "*" not in word:
                assert (ROOT / word).exists(), f"a command names {word}, which does not exist: {shlex.join(command)}"
        if "-m" in command[:-1] and command[0].startswith("python"):
            module = command[command.index("-m") + 1]
            assert importlib.util.find_spec(module) is not None, f"no module {module}: {shlex.join(command)}"
            continue
        if command[0] in ("docker", "cd"):  # an image's name is no command; `cd` enters a folder a command made
            continue
        unknown = [word for word in command if word.startswith("hf-unified-") and word not in SCRIPTS]
        assert not unknown, f"{unknown[0]} is not a console script of pyproject.toml"
        script = next((word for word in command if word in SCRIPTS or word.endswith(".py")), None)
        if script is None or script not in SCRIPTS:
            if script is not None:
                assert (ROOT / script).is_file(), f"a page runs {script}, which does not exist"
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
    assert checked > 10 and "hf-unified-train" in helps


def test_the_benchmarks_index_names_scripts_and_flags_that_exist():
    """One row per table, each with the command that regenerates it: the script exists and defines each flag (read
    from the scripts' sources, where their `add_argument` calls are, rather than run: their imports take seconds)."""
    index = (ROOT / "benchmarks" / "README.md").read_text()
    results = index[index.index("\n## Results\n") : index.index("\n## Machines\n")]
    rows = [line for line in results.splitlines() if line.startswith("| ") and "benchmarks/" in line]
    commands = [shlex.split(code) for row in rows for code in re.findall(r"`((?:python|bash) benchmarks/[^`]+)`", row)]
    assert len(commands) >= 15
    shared = "".join((ROOT / "benchmarks" / name).read_text() for name in ("common.py", "studies.py"))
    for command in commands:
        script = ROOT / command[1]
        assert script.is_file(), command[1]
        source = script.read_text() + shared
        for flag in (word for word in command[2:] if word.startswith("--")):
            assert f'"{flag}"' in source, f"{command[1]} defines no flag {flag}"
    linked = set()
    for row in rows:  # every row links its details page, beside its script
        (page,) = re.findall(r"\]\(([\w-]+\.md)\)", row)
        assert (ROOT / "benchmarks" / page).is_file(), page
        linked.add(page)
    # and every details page is in the index
    assert linked == {page.name for page in BENCHMARK_PAGES} - {"README.md", "methodology.md"}


def _without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_pages_point_to_files_and_headings_that_exist():
    checked = 0
    for page in [*PAGES, *BENCHMARK_PAGES]:
        text = _without_code_blocks(page.read_text())
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", _without_code_blocks(file.read_text()), flags=re.M)
                assert anchor in {_slug(h) for h in headings}, f"{page.relative_to(ROOT)}: no heading #{anchor}"
            checked += 1
    assert checked > 30
