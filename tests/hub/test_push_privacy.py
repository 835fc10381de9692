"""Nothing private leaves with a push (issue 27): links out of the folder, stray files, logs, local paths, public
repositories, damaged weights, an export folder that exists, the token. Against the loopback Hub (`hub_server`)."""

from __future__ import annotations

import base64
import importlib
import json
import struct
from pathlib import Path

import pytest
import test_hub
from hub_server import FakeHub
from safetensors import SafetensorError
from safetensors.torch import load_file
from test_hub import REPO_ID, TOKEN, folder_digest

from hf_unified.hub.folder import code_files
from hf_unified.hub.push import HubPushError, IncompleteModelFolderError, check_model_folder, push_folder

# The Hub suite's fixtures: a saved tiny UniCL folder (copied per test) and the loopback Hub with a token.
saved_unicl, model_folder, hub_env = test_hub.saved_unicl, test_hub.model_folder, test_hub.hub_env

FAKE_KEY = (
    b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
    b"b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQyNTUxOQAAACB0ZXN0LWtleS1ub3QtcmVhbA\n"
    b"-----END OPENSSH PRIVATE KEY-----\n"
)
SECRET = "wandb-key-0123456789abcdef0123456789abcdef"


def _payloads(value):
    """The base64 file contents in a request's JSON: a commit line's `content`, a preupload entry's `sample`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("content", "sample") and isinstance(item, str):
                yield base64.b64decode(item)
            else:
                yield from _payloads(item)
    elif isinstance(value, list):
        for item in value:
            yield from _payloads(item)


def sent_anywhere(hub: FakeHub, data: bytes) -> bool:
    """Whether `data` went to the server in any request: as it is, or inside a base64-encoded file content."""
    for request in hub.requests:
        if data in request.body:
            return True
        for line in request.body.splitlines():
            try:
                decoded = list(_payloads(json.loads(line)))
            except ValueError:  # not JSON (an LFS upload's raw bytes were checked above)
                continue
            if any(data in payload for payload in decoded):
                return True
    return False


def push_push_to_hub(argv: list[str]) -> int:
    return importlib.import_module("training.push_to_hub").main(argv)


# ---- links out of the folder --------------------------------------------------------------------------------------


def test_a_link_out_of_the_folder_never_reaches_the_hub(model_folder, hub_env, tmp_path):
    hub = hub_env()
    outside = tmp_path / "home" / ".ssh"
    outside.mkdir(parents=True)
    (outside / "id_rsa").write_bytes(FAKE_KEY)
    (model_folder / "notes.txt").symlink_to(outside / "id_rsa")

    result = push_folder(model_folder, REPO_ID)
    assert "notes.txt" not in hub.files(REPO_ID) and "notes.txt" in result.left_local
    assert not sent_anywhere(hub, FAKE_KEY) and not any(b"notes.txt" in r.body for r in hub.requests)
    assert "left local (not part of a model repository): " in result.summary() and "notes.txt" in result.summary()


@pytest.mark.parametrize(
    "name", ["config.json", "tokenizer.json", "modeling_unicl.py", "model.safetensors", "README.md"]
)
def test_a_required_file_linked_out_of_the_folder_is_refused(name, model_folder, hub_env, tmp_path):
    """A file the upload needs that is a link leading out of the folder: one line naming it, nothing sent."""
    hub = hub_env()
    if name == "README.md":
        (model_folder / name).write_text("---\nlicense: mit\n---\n")
    target = tmp_path / "elsewhere" / name
    target.parent.mkdir()
    (model_folder / name).rename(target)
    (model_folder / name).symlink_to(target)
    with pytest.raises(IncompleteModelFolderError) as error:
        push_folder(model_folder, REPO_ID)
    lines = [line for line in str(error.value).splitlines() if name in line]
    assert lines == [
        f"- {name} is a symbolic link to {target.resolve()}, outside the folder: a push never follows a link out of "
        "the folder (copy the file in if it belongs to the model)"
    ]
    assert hub.requests == []


def test_links_inside_the_folder_are_followed_and_a_linked_folder_pushes(model_folder, hub_env, tmp_path):
    """A link to the folder's own file (the chosen checkpoint's weights) sends that file; the folder itself may be a
    link (an output folder on a scratch disk). A link to a link out is still out."""
    hub = hub_env()
    weights = (model_folder / "model.safetensors").read_bytes()
    (model_folder / "model.safetensors").rename(model_folder / "checkpoint-10" / "model.safetensors")
    (model_folder / "model.safetensors").symlink_to(Path("checkpoint-10") / "model.safetensors")
    scratch = tmp_path / "scratch-link"
    scratch.symlink_to(model_folder)

    push_folder(scratch, REPO_ID)
    received = hub.files(REPO_ID)
    assert received["model.safetensors"] == weights
    assert not any(name.startswith("checkpoint-") for name in received)

    (tmp_path / "secret.txt").write_bytes(FAKE_KEY)
    (model_folder / "hop").symlink_to(tmp_path / "secret.txt")
    (model_folder / "vocab.txt").symlink_to("hop")  # inside, then out
    with pytest.raises(IncompleteModelFolderError, match="vocab.txt is a symbolic link to .*secret.txt, outside"):
        push_folder(scratch, REPO_ID)
    assert not sent_anywhere(hub, FAKE_KEY)


# ---- stray files, logs, run records -----------------------------------------------------------------------------


def test_only_what_a_model_repository_needs_is_uploaded(model_folder, hub_env):
    hub = hub_env()
    expected = {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "eval_results.json",
        "README.md",
        "handler.py",
        "requirements.txt",
        *code_files(model_folder)[0],
    }
    strays = {
        "wandb_settings.json": json.dumps({"api_key": SECRET}),
        "training_log.jsonl": json.dumps({"step": 1, "loss": 1.0, "note": SECRET}) + "\n",
        "training_args.json": json.dumps({"output_dir": str(model_folder), "train_data": [f"/home/alice/{SECRET}"]}),
        "notes.md": SECRET,
        "scratch.py": f"KEY = {SECRET!r}\n",
        ".env": f"WANDB_API_KEY={SECRET}\n",
        ".gitattributes": "*.safetensors filter=lfs\n",
        ".lock": "1234\n",
        "train.lock": "host 1234\n",
        "optimizer.safetensors": SECRET,
        "events.out.tfevents.1.host": SECRET,
    }
    for name, text in strays.items():
        (model_folder / name).write_text(text)
    (model_folder / "widget").mkdir()
    (model_folder / "widget" / "holiday.png").write_bytes(SECRET.encode())  # no card shows it

    result = push_folder(model_folder, REPO_ID)
    assert set(hub.files(REPO_ID)) == expected == set(result.files)
    assert not sent_anywhere(hub, SECRET.encode())
    assert not any(str(model_folder).encode() in request.body for request in hub.requests)
    assert set(result.left_local) == {*strays, "checkpoint-10/", "pytorch_model.bin", "widget/"}


def test_a_record_holding_a_local_path_is_refused(model_folder, hub_env, monkeypatch, tmp_path):
    """The home folder's or the model folder's path in a file that would be published (a hand-written card, an old
    config's `_name_or_path`): one line naming the file and the path, nothing sent."""
    hub = hub_env()
    home = tmp_path / "home" / "alice"
    monkeypatch.setenv("HOME", str(home))
    (model_folder / "README.md").write_text(f"---\nlicense: mit\n---\nTrained on `{home}/data/shards`.\n")
    config = json.loads((model_folder / "config.json").read_text())
    (model_folder / "config.json").write_text(json.dumps({**config, "_name_or_path": str(model_folder)}))
    with pytest.raises(IncompleteModelFolderError) as error:
        push_folder(model_folder, REPO_ID)
    problems = str(error.value).splitlines()[1:]
    assert problems == [
        f"- config.json holds the local path {model_folder}, which would be published: edit it out",
        f"- README.md holds the local path {home}, which would be published: edit it out (a card hf-unified "
        "rendered: delete README.md and push again)",
    ]
    assert hub.requests == []

    # Paths that only begin with the same letters are other paths.
    (model_folder / "README.md").write_text(f"---\nlicense: mit\n---\nNot {home}2, not {home}-old.\n")
    (model_folder / "config.json").write_text(json.dumps(config))
    push_folder(model_folder, REPO_ID)


# ---- private by default -----------------------------------------------------------------------------------------


def created_visibility(hub: FakeHub) -> list[str]:
    return [json.loads(r.body).get("visibility") for r in hub.requests if r.path == "/api/repos/create"]


def test_new_repositories_are_private_unless_asked(model_folder, hub_env, capsys):
    from hf_unified.training.parsing import parse_arguments

    hub = hub_env()
    push_folder(model_folder, REPO_ID)
    assert created_visibility(hub) == ["private"] and hub.repos[REPO_ID].private

    assert (
        push_push_to_hub(["--folder", str(model_folder), "--repo_id", "test-org/public", "--hub_private", "false"])
        == 0
    )
    assert created_visibility(hub) == ["private", "public"] and not hub.repos["test-org/public"].private
    assert "left local (not part of a model repository): checkpoint-10/, pytorch_model.bin" in capsys.readouterr().out

    assert parse_arguments(["--push_to_hub", "--hub_model_id", REPO_ID])[2].hub_private is True
    assert parse_arguments(["--hub_private", "false"])[2].hub_private is False


# ---- damaged weights --------------------------------------------------------------------------------------------


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _last_tensor(header: dict) -> str:
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def _edit_last(change):
    def damage(data: bytes) -> bytes:
        header, body = split_safetensors(data)
        last = _last_tensor(header)
        header[last] = change(dict(header[last]))
        return join_safetensors(header, body)

    return damage


def _overlap(data: bytes) -> bytes:
    header, body = split_safetensors(data)
    last = _last_tensor(header)
    start, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [start - 4, end - 4]
    return join_safetensors(header, body[:-4])


def _header_only(header) -> bytes:
    return join_safetensors(header, b"")


DAMAGES = {
    "truncated": (lambda d: d[:-10], "its size is not the size its header describes (truncated or damaged)"),
    "bytes appended": (lambda d: d + b"\0" * 8, "its size is not the size its header describes"),
    "empty": (lambda d: b"", "it is too short to hold a safetensors header (empty or truncated)"),
    "not a safetensors file": (lambda d: b"\x89PNG\r\n\x1a\n" + d[8:], "its header length is impossible"),
    "bad header json": (lambda d: struct.pack("<Q", 16) + b'{"a": {"dtype": ' + d[24:], "invalid JSON in header"),
    "header is a list": (lambda d: join_safetensors([1, 2], split_safetensors(d)[1]), "invalid JSON in header"),
    "offsets past the end": (
        _edit_last(lambda e: {**e, "data_offsets": [e["data_offsets"][0], e["data_offsets"][1] + 4096]}),
        "a tensor's byte range does not match its shape and dtype, or lies past the end of the file",
    ),
    "unknown dtype": (_edit_last(lambda e: {**e, "dtype": "F99"}), "its header names the unknown dtype 'F99'"),
    "dtype of another size": (
        _edit_last(lambda e: {**e, "dtype": "F16"}),
        "a tensor's byte range does not match its shape and dtype",
    ),
    "overlapping tensors": (_overlap, "(its bytes overlap another tensor's or leave a gap)"),
    "missing data_offsets": (
        _edit_last(lambda e: {k: v for k, v in e.items() if k != "data_offsets"}),
        "missing field `data_offsets`",
    ),
    "no tensors": (lambda d: _header_only({"__metadata__": {"format": "pt"}}), "model.safetensors holds no tensors"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_weights_are_one_line_naming_the_file(damage, model_folder):
    """Each damage the loader refuses is refused by the pre-push check (which runs before any request, see
    test_hub.py::test_incomplete_folders_are_refused_before_any_request) in one line naming the file; none crashes
    the check. Old code: accepted the unknown dtype, the dtype of another size and the overlap; crashed with
    AttributeError on the list header and KeyError on the missing data_offsets."""
    change, reason = DAMAGES[damage]
    path = model_folder / "model.safetensors"
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(IncompleteModelFolderError) as error:
        check_model_folder(model_folder, require_readme=False)
    problems = str(error.value).splitlines()[1:]
    assert len(problems) == 1 and problems[0].startswith("- model.safetensors ") and reason in problems[0], problems

    if damage != "no tensors":  # the loader's reader refuses the file too: the check is not stricter than it
        with pytest.raises(SafetensorError):
            load_file(path)


def test_sharded_weights_are_checked_shard_by_shard(model_folder):
    from safetensors.torch import save_file

    tensors = load_file(model_folder / "model.safetensors")
    names = sorted(tensors)
    half = len(names) // 2
    save_file({n: tensors[n] for n in names[:half]}, model_folder / "model-00001-of-00002.safetensors")
    save_file({n: tensors[n] for n in names[half:]}, model_folder / "model-00002-of-00002.safetensors")
    (model_folder / "model.safetensors").unlink()
    weight_map = {n: f"model-0000{1 + (i >= half)}-of-00002.safetensors" for i, n in enumerate(names)}
    index = model_folder / "model.safetensors.index.json"

    def problems(index_weight_map) -> list[str]:
        index.write_text(json.dumps({"metadata": {}, "weight_map": index_weight_map}))
        try:
            check_model_folder(model_folder, require_readme=False)
        except IncompleteModelFolderError as error:
            return str(error).splitlines()[1:]
        return []

    assert problems(weight_map) == []
    assert problems({**weight_map, names[0]: "model-00002-of-00002.safetensors"}) == [
        f"- model-00002-of-00002.safetensors lacks 1 of the tensors model.safetensors.index.json puts there "
        f"(first: {names[0]})"
    ]
    assert problems({**weight_map, names[0]: "../../outside.safetensors"}) == [
        "- model.safetensors.index.json lists the shard '../../outside.safetensors', which is not a file of this "
        "folder"
    ]
    index.write_text("{not json")
    with pytest.raises(IncompleteModelFolderError, match="model.safetensors.index.json is not a valid weight index"):
        check_model_folder(model_folder, require_readme=False)


# ---- the export folder, the token -------------------------------------------------------------------------------


def test_clip_dir_is_replaced_only_with_overwrite(model_folder, hub_env, tmp_path, capfd):
    hub = hub_env()
    clip_dir = tmp_path / "clip"
    clip_dir.mkdir()
    (clip_dir / "keep.txt").write_text("someone's work")
    argv = ["--folder", str(model_folder), "--repo_id", REPO_ID, "--export-clip", "--clip_dir", str(clip_dir)]
    before = folder_digest(model_folder)
    assert push_push_to_hub(argv) == 1
    err = capfd.readouterr().err
    assert err == (
        f"push_to_hub: --clip_dir {clip_dir} exists: pass --overwrite to replace it, or choose another folder "
        "(nothing was sent)\n"
    )
    assert (clip_dir / "keep.txt").read_text() == "someone's work" and hub.requests == []
    assert folder_digest(model_folder) == before

    assert push_push_to_hub([*argv, "--overwrite"]) == 0
    assert (
        not (clip_dir / "keep.txt").exists()
        and json.loads((clip_dir / "config.json").read_text())["model_type"] == "clip"
    )
    assert hub.repos[f"{REPO_ID}-clip"].private


@pytest.mark.parametrize(
    ("where", "reason"),
    [("parent", "contains the source model folder"), ("folder", "is the source model folder")],
)
def test_a_clip_dir_around_the_folder_is_refused_even_with_overwrite_before_anything_is_sent(
    where, reason, model_folder, hub_env, capfd
):
    """The attack: `--clip_dir` at the model folder's parent (or the folder) with `--overwrite` replaced it after the
    push: the model, its checkpoints and every sibling run deleted, exit 0."""
    hub = hub_env()
    sibling = model_folder.parent / "other-run"
    (sibling / "checkpoint-5").mkdir(parents=True)
    (sibling / "training_log.jsonl").write_text('{"step": 5}\n')
    clip_dir = {"parent": model_folder.parent, "folder": model_folder}[where]
    before = folder_digest(model_folder)
    argv = ["--folder", str(model_folder), "--repo_id", REPO_ID, "--export-clip", "--clip_dir", str(clip_dir)]
    assert push_push_to_hub([*argv, "--overwrite"]) == 1
    err = capfd.readouterr().err
    assert err.startswith(f"push_to_hub: --clip_dir: export target {clip_dir} {reason}") and err.count("\n") == 1
    assert err.endswith("(nothing was sent)\n") and hub.requests == []
    assert folder_digest(model_folder) == before and (sibling / "checkpoint-5").is_dir()


class EchoingHub(FakeHub):
    """A Hub that refuses every repository creation and quotes the request's credentials in its error message."""

    def handle(self, method, path, body, headers):
        if path == "/api/repos/create":
            credentials = headers.get("Authorization")
            return (
                403,
                {"Content-Type": "application/json"},
                json.dumps({"error": f"{credentials} is read-only"}).encode(),
            )
        return super().handle(method, path, body, headers)


def test_the_token_is_never_printed_even_when_the_server_quotes_it(model_folder, hub_env, monkeypatch, capfd):
    hub_env()  # the token and online mode
    with EchoingHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        with pytest.raises(HubPushError) as error:
            push_folder(model_folder, REPO_ID)
        message = str(error.value)
        assert "Bearer *** is read-only" in message and TOKEN not in message  # the server did quote it
        assert push_push_to_hub(["--folder", str(model_folder), "--repo_id", REPO_ID]) == 1
    out, err = capfd.readouterr()
    assert "Bearer *** is read-only" in err and TOKEN not in out + err
