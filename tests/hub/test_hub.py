"""Pushing to a Hub-compatible server on 127.0.0.1: bytes, LFS, remote code from the received files, errors, token."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_server import FakeHub  # tests/ is on sys.path (pytest rootdir-relative import)
from huggingface_hub import ModelCard, constants
from PIL import Image
from test_hub_models import save_tiny_unicl, tiny_towers

from hf_unified.hub.model_card import HUB_ID_PLACEHOLDER, write_model_card
from hf_unified.hub.push import (
    HubPushError,
    IncompleteModelFolderError,
    check_can_push,
    check_model_folder,
    push_folder,
    upload_files,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_" + "TestTokenThatMustNeverBePrinted0123"
REPO_ID = "test-org/unicl-tiny"
TEXTS = ["a photo of a cat.", "a red bus on the street.", "a dog"]


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def saved_unicl(tmp_path_factory, tiny_clip_tokenizer):
    """A tiny saved UniCL folder (model, processor, eval JSON, a training checkpoint that must stay local)."""
    folder = tmp_path_factory.mktemp("saved") / "unicl-tiny"
    model, processor = save_tiny_unicl(folder, tiny_clip_tokenizer)
    (folder / "eval_results.json").write_text(json.dumps({"num_examples": 8, "zero_shot_top1_accuracy": 0.5}))
    (folder / "checkpoint-10").mkdir()
    (folder / "checkpoint-10" / "optimizer.bin").write_bytes(b"\x80\x04 not for the Hub")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04 a pickle")

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 44, 3), dtype=np.uint8))
    image.save(folder.parent / "cat.jpg")
    inputs = processor(text=TEXTS, images=[image], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits_per_image
    torch.save(dict(inputs), folder.parent / "inputs.pt")
    torch.save(expected, folder.parent / "expected.pt")
    return folder


@pytest.fixture
def model_folder(saved_unicl, tmp_path):
    """A fresh copy per test: a push may write README.md into it."""
    return Path(shutil.copytree(saved_unicl, tmp_path / "unicl-tiny"))


@pytest.fixture
def hub_env(monkeypatch):
    """Points this process's huggingface_hub at a fake Hub (conftest turned offline mode on; the server is local)."""

    def start(**kwargs) -> FakeHub:
        hub = FakeHub(**kwargs).__enter__()
        started.append(hub)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        return hub

    started: list[FakeHub] = []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield start
    for hub in started:
        hub.__exit__(None, None, None)


def assert_received_equals_local(
    hub: FakeHub, folder: Path, revision: str = "main", repo_id: str = REPO_ID
) -> dict[str, bytes]:
    received = hub.files(repo_id, revision)
    expected = upload_files(folder)
    assert sorted(received) == expected
    for name in expected:
        assert received[name] == (folder / name).read_bytes(), f"{name} differs from the local file"
    return received


def test_push_regular_path_is_byte_identical_and_renders_the_card(model_folder, hub_env):
    hub = hub_env()
    assert not (model_folder / "README.md").exists()
    result = push_folder(model_folder, REPO_ID, commit_message="first upload")

    received = assert_received_equals_local(hub, model_folder)
    assert {
        "config.json",
        "model.safetensors",
        "README.md",
        "modeling_unicl.py",
        "configuration_unicl.py",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "eval_results.json",
    } <= set(received)
    assert not any(name.endswith(".bin") or name.startswith("checkpoint-") for name in received)
    config = json.loads(received["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_unicl.UniCLModel"
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_unicl.UniCLModel"

    card = ModelCard(received["README.md"].decode())
    assert card.data.library_name == "transformers" and "unicl" in card.data.tags
    assert f'model_id = "{REPO_ID}"' in card.text
    assert [r.metric_value for r in card.data.eval_results] == [0.5]

    # (the card's widget photos were read first, through the same endpoint; the fake Hub has none: no output)
    routes = [route for route in hub.routes_called() if "/resolve/" not in route]
    assert routes[0] == "POST /api/repos/create"
    assert "POST /api/validate-yaml" in routes and f"POST /api/models/{REPO_ID}/preupload/main" in routes
    assert routes[-1] == f"POST /api/models/{REPO_ID}/commit/main"
    assert not any("lfs" in route for route in routes)
    assert all(r.authorization == f"Bearer {TOKEN}" for r in hub.requests)
    assert result.commit_url.startswith(f"{hub.endpoint}/{REPO_ID}/commit/")
    assert hub.repos[REPO_ID].branches["main"][-1][2] == "first upload"


def test_push_lfs_path_is_byte_identical(model_folder, hub_env):
    hub = hub_env(lfs_threshold=4096)
    push_folder(model_folder, REPO_ID)
    assert_received_equals_local(hub, model_folder)
    weights = (model_folder / "model.safetensors").read_bytes()
    assert len(weights) >= 4096 and hashlib.sha256(weights).hexdigest() in hub.lfs_objects
    routes = hub.routes_called()
    for route in (f"POST /{REPO_ID}.git/info/lfs/objects/batch", "POST /lfs-verify"):
        assert route in routes
    assert any(route.startswith("PUT /lfs-objects/") for route in routes)


def test_received_files_load_with_remote_code_and_the_card_usage_runs(
    saved_unicl, model_folder, hub_env, run_without_package, tmp_path
):
    hub = hub_env(lfs_threshold=4096)
    push_folder(model_folder, REPO_ID)
    downloaded = tmp_path / "downloaded"
    downloaded.mkdir()
    for name, data in hub.files(REPO_ID).items():
        (downloaded / name).write_bytes(data)
    # The card's usage code, pointed at the downloaded copy instead of the Hub id, run next to an image.
    readme = (downloaded / "README.md").read_text()
    usage = re.search(r"```python\n(.*?)```", readme, re.S).group(1).replace(REPO_ID, str(downloaded))
    (tmp_path / "usage.py").write_text(usage)
    shutil.copy(saved_unicl.parent / "cat.jpg", tmp_path / "cat.jpg")

    result = run_without_package(
        f"""
        import runpy, torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(downloaded)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load({str(saved_unicl.parent / "inputs.pt")!r})
        with torch.no_grad():
            got = model(**inputs).logits_per_image
        torch.testing.assert_close(got, torch.load({str(saved_unicl.parent / "expected.pt")!r}), rtol=0, atol=1e-6)
        runpy.run_path("usage.py")
        print("remote code ok")
        """,
        cwd=tmp_path,
    )
    assert "remote code ok" in result.stdout
    assert "'a photo of a cat'" in result.stdout  # the usage snippet printed its probabilities


def test_repush_is_harmless_and_updates_only_changes(model_folder, hub_env):
    hub = hub_env()
    push_folder(model_folder, REPO_ID)
    commits = hub.commits(REPO_ID)
    push_folder(model_folder, REPO_ID)  # same content: no new commit, same files
    assert hub.commits(REPO_ID) == commits
    assert_received_equals_local(hub, model_folder)

    (model_folder / "eval_results.json").write_text(json.dumps({"zero_shot_top1_accuracy": 0.75}))
    push_folder(model_folder, REPO_ID)
    assert len(hub.commits(REPO_ID)) == len(commits) + 1
    assert json.loads(hub.files(REPO_ID)["eval_results.json"]) == {"zero_shot_top1_accuracy": 0.75}
    commit_lines = [json.loads(line) for line in hub.requests[-1].body.decode().splitlines()]
    assert [line["value"]["path"] for line in commit_lines[1:]] == ["eval_results.json"]


def test_push_to_a_branch_leaves_main_alone(model_folder, hub_env):
    hub = hub_env()
    push_folder(model_folder, REPO_ID, revision="experiment")
    assert_received_equals_local(hub, model_folder, revision="experiment")
    assert hub.files(REPO_ID, "main") == {}
    push_folder(model_folder, REPO_ID, revision="experiment")  # the branch exists now: still fine


@pytest.mark.parametrize(("route", "step"), [("create", "create the repository"), ("commit", "upload the files")])
def test_server_error_gives_clear_message_and_leaves_folder_intact(model_folder, hub_env, route, step, capfd):
    hub = hub_env()
    write_model_card(model_folder, repo_id=REPO_ID)  # a complete card: the push has nothing to prepare locally
    before = folder_digest(model_folder)
    hub.fail_on(route, 500)
    with pytest.raises(HubPushError) as error:
        push_folder(model_folder, REPO_ID)
    message = str(error.value)
    assert f"failed while trying to {step}" in message and REPO_ID in message and "500" in message
    assert "local folder is unchanged" in message
    assert TOKEN not in message and TOKEN not in "".join(capfd.readouterr())
    assert folder_digest(model_folder) == before
    if route == "commit":
        assert hub.files(REPO_ID) == {}  # nothing half-committed

    hub.clear_failures()  # the cause is fixed: the same push now goes through
    push_folder(model_folder, REPO_ID)
    assert_received_equals_local(hub, model_folder)


def test_incomplete_folders_are_refused_before_any_request(model_folder, hub_env):
    hub = hub_env()
    (model_folder / "model.safetensors").write_bytes((model_folder / "model.safetensors").read_bytes()[:-10])
    (model_folder / "modeling_unicl.py").unlink()
    (model_folder / "tokenizer.json").unlink()
    before = folder_digest(model_folder)
    with pytest.raises(IncompleteModelFolderError) as error:
        push_folder(model_folder, REPO_ID)
    message = str(error.value)
    assert "model.safetensors cannot be loaded: its size is not the size its header describes" in message
    assert "code file modeling_unicl.py" in message
    assert "tokenizer files are missing" in message
    assert hub.requests == [] and not (model_folder / "README.md").exists()  # nothing sent, nothing written
    assert folder_digest(model_folder) == before

    (model_folder / "model.safetensors").unlink()
    config = json.loads((model_folder / "config.json").read_text())
    del config["auto_map"]
    (model_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(IncompleteModelFolderError) as error:
        check_model_folder(model_folder)
    assert "model.safetensors (or model.safetensors.index.json with its shards) is missing" in str(error.value)
    assert "auto_map lacks AutoConfig/AutoModel" in str(error.value)


def test_relative_imports_of_code_files_are_checked(model_folder):
    (model_folder / "README.md").write_text("---\nlicense: mit\n---\n")
    check_model_folder(model_folder)
    (model_folder / "modeling_unicl.py").write_text(
        (model_folder / "modeling_unicl.py").read_text() + "\nfrom .missing_module import x\n"
    )
    with pytest.raises(IncompleteModelFolderError, match="missing_module.py"):
        check_model_folder(model_folder)


def test_bad_repo_id_and_offline_mode(model_folder, hub_env, monkeypatch):
    hub = hub_env()
    before = folder_digest(model_folder)
    with pytest.raises(ValueError, match="repo_id must look like 'org/name'"):
        push_folder(model_folder, "no-namespace")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE"):
        push_folder(model_folder, REPO_ID)
    assert hub.requests == [] and not (model_folder / "README.md").exists()
    assert folder_digest(model_folder) == before


def test_card_placeholder_is_filled_at_push(model_folder, hub_env):
    hub = hub_env()
    write_model_card(model_folder)
    assert HUB_ID_PLACEHOLDER in (model_folder / "README.md").read_text()
    push_folder(model_folder, REPO_ID)
    readme = hub.files(REPO_ID)["README.md"].decode()
    assert HUB_ID_PLACEHOLDER not in readme and f'"{REPO_ID}"' in readme


def run_cli(args: list[str], hub: FakeHub) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.endpoint,
        "HF_TOKEN": TOKEN,
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
    }
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "training" / "push_to_hub.py"), *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_failure_is_one_clear_line_without_the_token(model_folder, hub_env, capfd):
    push_to_hub = importlib.import_module("training.push_to_hub")
    hub = hub_env()
    hub.fail_on("commit", 500)
    before = folder_digest(model_folder)
    assert push_to_hub.main(["--folder", str(model_folder), "--repo_id", REPO_ID]) == 1
    out, err = capfd.readouterr()
    assert "push_to_hub: pushing" in err and "failed while trying to upload the files" in err
    assert TOKEN not in out + err
    assert folder_digest(model_folder) == before
    assert push_to_hub.main(["--folder", str(model_folder / "nowhere"), "--repo_id", REPO_ID]) == 1
    assert "is not a folder" in capfd.readouterr().err


def test_cli_script_pushes_to_the_endpoint_in_hf_endpoint(model_folder):
    with FakeHub() as hub:
        done = run_cli(
            [
                "--folder",
                str(model_folder),
                "--repo_id",
                REPO_ID,
                "--private",
                "--revision",
                "v1",
                "--commit_message",
                "CLI upload",
            ],
            hub,
        )
        assert done.returncode == 0, done.stderr
        assert f"{hub.endpoint}/{REPO_ID}" in done.stdout and "model.safetensors" in done.stdout
        assert hub.repos[REPO_ID].private
        assert hub.repos[REPO_ID].branches["v1"][-1][2] == "CLI upload"
        assert_received_equals_local(hub, model_folder, revision="v1")
        assert any(r.authorization == f"Bearer {TOKEN}" for r in hub.requests)
    assert TOKEN not in done.stdout + done.stderr


def _tiny_uniclip(tokenizer):
    from hf_unified.configuration_uniclip import UniCLIPConfig
    from hf_unified.modeling_uniclip import UniCLIPModel
    from hf_unified.processing_uniclip import UniCLIPProcessor, uniclip_image_processor

    config = UniCLIPConfig(
        **tiny_towers(patch_size=16),
        projection_dim=16,
        augmentation_hidden_size=8,
    )
    return UniCLIPModel(config), UniCLIPProcessor(uniclip_image_processor(32), tokenizer)


def _tiny_msclip(tokenizer):
    from hf_unified.configuration_msclip import MSCLIPConfig
    from hf_unified.modeling_msclip import MSCLIPModel
    from hf_unified.processing_msclip import MSCLIPProcessor, msclip_image_processor

    config = MSCLIPConfig.from_preset(
        "ms-clip-s",
        vocab_size=600,
        max_position_embeddings=77,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        vision_num_attention_heads=2,
        text_num_attention_heads=4,
        image_size=32,
        patch_size=8,
        projection_dim=16,
        stem_channels=[4, 8, 16],
        stem_strides=[2, 2],
        parallel_channels=[4, 8],
        parallel_strides=[2, 2],
        parallel_t2b_kernels=[4, 2],
        parallel_lateral_layers=[1, 2],
        bos_token_id=598,
        eos_token_id=599,
        pad_token_id=0,
    )
    return MSCLIPModel(config), MSCLIPProcessor(msclip_image_processor(32), tokenizer)


def _converted_unicl(folder: Path) -> None:
    from hf_unified.conversion import unicl as convert

    fixtures = REPO_ROOT.parent / "shared" / "fixtures"
    if not (fixtures / "unicl-tiny-a").is_dir():
        pytest.skip("the UniCL golden fixture is missing")
    convert.convert_unicl_checkpoint(
        fixtures / "unicl-tiny-a" / "checkpoint.pth",
        folder,
        config_json=fixtures / "unicl-tiny-a" / "config.json",
        tokenizer_dir=fixtures / "tokenizer-tiny-clip-bpe",
        base_model="microsoft/UniCL",
    )


@pytest.mark.parametrize("kind", ["uniclip", "msclip", "unicl-converted"])
def test_every_method_folder_pushes_with_a_complete_card(
    kind, hub_env, tmp_path, tiny_clip_tokenizer, monkeypatch, capsys
):
    """The folder each method saves passes the completeness check (auto_map and every code file it imports) and
    arrives byte-identical with a card that names the method."""
    folder = tmp_path / kind
    hub = hub_env(lfs_threshold=4096)  # first: the converter's card reads its widget photos through HF_ENDPOINT
    if kind == "unicl-converted":
        _converted_unicl(folder)
        method = "unicl"
    else:
        build = {"uniclip": _tiny_uniclip, "msclip": _tiny_msclip}[kind]
        model, processor = build(tiny_clip_tokenizer)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        method = kind
    push_folder(folder, REPO_ID)
    received = assert_received_equals_local(hub, folder)
    card = ModelCard(received["README.md"].decode())
    assert method in card.data.tags and "custom_code" in card.data.tags
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert f'model_id = "{REPO_ID}"' in card.text and "```bibtex" in card.text
    if kind == "unicl-converted":
        assert card.data.base_model == "microsoft/UniCL" and "checkpoint.pth" in card.text

    # The card's usage code runs against this method's folder (in-process: the package's classes serve it).
    usage = re.search(r"```python\n(.*?)```", card.text, re.S).group(1).replace(REPO_ID, str(folder))
    Image.new("RGB", (40, 36), "red").save(tmp_path / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(_write(tmp_path / "usage.py", usage)))
    assert "'a photo of a cat'" in capsys.readouterr().out


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# Every way a push can fail after the checks: the Hub route that fails, the step the message names, what the message
# says exists on the Hub. The folder has no card and no endpoint handler, so the push renders them into the upload.
FAILURES = [
    ("create", "create the repository", "nothing was sent", None),
    ("branch", "create branch 'v2'", "exists on the Hub, but no commit was made", "v2"),
    ("validate-yaml", "upload the files", "exists on the Hub, but no commit was made", None),
    ("preupload", "upload the files", "exists on the Hub, but no commit was made", None),
    ("lfs-batch", "upload the files", "exists on the Hub, but no commit was made", None),
    ("lfs-upload", "upload the files", "exists on the Hub, but no commit was made", None),
    ("lfs-verify", "upload the files", "exists on the Hub, but no commit was made", None),
    ("commit", "upload the files", "exists on the Hub, but no commit was made", None),
]


@pytest.mark.parametrize(("route", "step", "remote", "revision"), FAILURES, ids=[f[0] for f in FAILURES])
def test_a_failed_push_leaves_the_folder_byte_identical(model_folder, hub_env, route, step, remote, revision):
    hub = hub_env(lfs_threshold=4096)
    assert not (model_folder / "README.md").exists() and not (model_folder / "handler.py").exists()
    before = folder_digest(model_folder)
    hub.fail_on(route, 422)  # a 4xx: huggingface_hub retries 5xx answers with a back-off (tens of seconds)
    with pytest.raises(HubPushError) as error:
        push_folder(model_folder, REPO_ID, revision=revision)
    message = str(error.value)
    assert f"failed while trying to {step}" in message and "422" in message, message
    assert (
        f"On the Hub: {remote if remote == 'nothing was sent' else 'the model repository ' + REPO_ID + ' ' + remote}"
        in message
    )
    assert "The local folder is unchanged (README.md, handler.py, requirements.txt" in message
    assert "rendered for this upload only, not written" in message and TOKEN not in message
    assert folder_digest(model_folder) == before  # no file changed, none added (no temporary file either)
    if REPO_ID in hub.repos:
        assert hub.files(REPO_ID, revision or "main") == {}  # nothing half-committed

    hub.clear_failures()  # the cause is fixed: the same push goes through and only then writes the rendered files
    result = push_folder(model_folder, REPO_ID, revision=revision)
    assert result.written == ["README.md", "handler.py", "requirements.txt"] == result.rendered
    assert_received_equals_local(hub, model_folder, revision=revision or "main")
    summary = result.summary(model_folder)
    assert f"rendered for the upload, then written into {model_folder}: README.md, handler.py" in summary


def test_repush_renders_nothing_and_says_so(model_folder, hub_env):
    hub_env()
    push_folder(model_folder, REPO_ID)
    before = folder_digest(model_folder)
    result = push_folder(model_folder, REPO_ID)
    assert result.rendered == [] and result.written == []
    assert "uploaded as it is (nothing rendered, nothing written locally)" in result.summary()
    assert folder_digest(model_folder) == before


def test_local_write_failure_after_a_good_push_is_reported(model_folder, hub_env, monkeypatch):
    import hf_unified.hub.push as push_module

    hub = hub_env()

    def refuse(path, data):
        raise PermissionError(f"read-only: {path.name}")

    monkeypatch.setattr(push_module, "write_file", refuse)
    before = folder_digest(model_folder)
    result = push_folder(model_folder, REPO_ID)
    assert "README.md" in hub.files(REPO_ID) and "handler.py" in hub.files(REPO_ID)  # the Hub copy is complete
    assert result.written == [] and "read-only: README.md" in result.local_error
    assert "could not write README.md, handler.py, requirements.txt" in result.summary()
    assert folder_digest(model_folder) == before


@pytest.mark.parametrize(
    ("repo_id", "message"),
    [
        ("no-namespace", "repo_id must look like 'org/name'"),
        ("org/na me", "repo_id must look like 'org/name'"),
        ("org/a--b", "is not a valid Hub id: Cannot have -- or .."),
        (None, "repo_id must look like 'org/name', got None"),
    ],
)
def test_check_can_push_refuses_bad_ids(repo_id, message, hub_env):
    hub_env()
    with pytest.raises(ValueError, match=re.escape(message)):
        check_can_push(repo_id)


def test_check_can_push_needs_online_mode_and_a_token(hub_env, monkeypatch, capfd):
    import hf_unified.hub.push as push_module

    hub = hub_env()
    check_can_push(REPO_ID)  # token from HF_TOKEN, online: fine, and nothing was sent
    check_can_push(REPO_ID, token="hf_explicit")
    assert hub.requests == []
    monkeypatch.setattr(push_module, "get_token", lambda: None)
    with pytest.raises(HubPushError, match="no Hub token: set HF_TOKEN or run `hf auth login`"):
        check_can_push(REPO_ID)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE is set"):
        check_can_push(REPO_ID, token=TOKEN)
    assert TOKEN not in "".join(capfd.readouterr())


def test_native_export_folder_pushes_without_code_or_handler(model_folder, hub_env, tmp_path):
    from hf_unified.hub.export import export_clip

    hub = hub_env()
    exported = export_clip(model_folder, tmp_path / "clip").output_dir
    result = push_folder(exported, "test-org/unicl-tiny-clip")
    received = hub.files("test-org/unicl-tiny-clip")
    assert not any(name.endswith(".py") for name in received) and "requirements.txt" not in received
    assert result.rendered == ["README.md"]  # the export's placeholder id filled in
    assert '"test-org/unicl-tiny-clip"' in received["README.md"].decode()


def test_cli_export_clip_and_space_push_three_repos(model_folder, hub_env, capsys, tmp_path):
    push_to_hub = importlib.import_module("training.push_to_hub")
    hub = hub_env()
    clip_dir = tmp_path / "clip"
    argv = ["--folder", str(model_folder), "--repo_id", REPO_ID, "--export-clip", "--clip_dir", str(clip_dir)]
    assert push_to_hub.main([*argv, "--space"]) == 0
    out = capsys.readouterr().out
    assert "exported the unicl model" in out and f"running {REPO_ID}-clip" in out
    assert json.loads(hub.files(f"{REPO_ID}-clip")["config.json"])["model_type"] == "clip"
    assert_received_equals_local(hub, clip_dir.resolve(), repo_id=f"{REPO_ID}-clip")
    space_config = json.loads(hub.files(f"{REPO_ID}-demo", repo_type="space")["space_config.json"])
    assert space_config == {**space_config, "model_id": f"{REPO_ID}-clip", "trust_remote_code": False}

    # A graph that is not CLIP's: the model is pushed, the export is skipped with the reason, exit code 0.
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, "text_pooling": "mean"}))
    assert push_to_hub.main([*argv, "--overwrite"]) == 0  # the export folder of the first run exists
    out = capsys.readouterr().out
    assert "not exported to a native CLIPModel" in out and "text_pooling is 'mean'" in out
    assert json.loads(hub.files(REPO_ID)["config.json"])["text_pooling"] == "mean"
