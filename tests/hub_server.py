"""A small Hub-compatible HTTP server on 127.0.0.1 for testing pushes offline.

It implements what `huggingface_hub` 2.x's `HfApi.create_repo`, `create_branch`, `create_commit` /
`upload_folder` (legacy LFS path, `HF_HUB_DISABLE_XET=1`), `repo_info` and `hf_hub_download` send, for model, space
and dataset repositories (`{type}` below is `models`, `spaces` or `datasets`; a model's URL prefix is empty):

- `POST /api/repos/create`                                   -> 200 `{url}`, or 409 when the repo exists
- `POST /api/validate-yaml` -> `{errors, warnings}` (400 when the YAML is not a mapping)
- `POST /api/{type}/{ns}/{name}/branch/{branch}`             -> 200, or 409 when the branch exists
- `POST /api/{type}/{ns}/{name}/preupload/{rev}`             -> `{files: [{path, uploadMode, shouldIgnore, oid}]}`
- `POST /[{type}/]{ns}/{name}.git/info/lfs/objects/batch`    -> basic-transfer upload + verify actions
- `PUT  /lfs-objects/{oid}` and `POST /lfs-verify`           -> stores / checks an LFS object (sha256 checked)
- `POST /api/{type}/{ns}/{name}/commit/{rev}` (NDJSON)       -> `{commitUrl, commitOid, pullRequestUrl}`
- `GET  /api/{type}/{ns}/{name}[/revision/{rev}]`            -> `{id, sha, private, siblings}`
- `HEAD|GET /[{type}/]{ns}/{name}/resolve/{rev}/{path}`      -> a file's bytes with the headers `hf_hub_download`
  reads (`X-Repo-Commit`, `ETag`, `Content-Length`)

`add_repo` seeds a repository (e.g. a dataset a test downloads from).

Files at least `lfs_threshold` bytes are answered `lfs` at preupload (default: never), like the Hub does for large
binaries. `fail_on(route, status)` makes one route answer an HTTP error, for error-path tests. Every request is
recorded (method, path, Authorization header) so tests can check what the client sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml


def git_blob_sha1(data: bytes) -> str:
    """`git hash-object` of `data`: the oid the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


REPO_TYPES = ("model", "space", "dataset")


def repo_key(repo_id: str, repo_type: str = "model") -> str:
    """How `FakeHub.repos` names a repository: the id for models, `"{type}s/{id}"` for the others (as in URLs)."""
    return repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"


@dataclass
class Repo:
    repo_id: str
    private: bool
    repo_type: str = "model"
    sdk: str | None = None
    # branch -> list of commits (oldest first); each commit is (oid, {path: bytes}, summary)
    branches: dict[str, list[tuple[str, dict[str, bytes], str]]] = field(default_factory=dict)

    def files(self, revision: str = "main") -> dict[str, bytes]:
        commits = self.branches.get(revision)
        return dict(commits[-1][1]) if commits else {}

    def head(self, revision: str = "main") -> str | None:
        commits = self.branches.get(revision)
        return commits[-1][0] if commits else None


@dataclass
class RecordedRequest:
    method: str
    path: str
    authorization: str | None
    body: bytes


class FakeHub:
    """State of the fake Hub plus the HTTP server that serves it. Use as a context manager."""

    def __init__(self, lfs_threshold: int | None = None):
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[RecordedRequest] = []
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._commit_counter = 0
        handler = type("Handler", (_Handler,), {"hub": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ---- control -----------------------------------------------------------------------------------------------
    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_on(self, route: str, status: int = 500) -> None:
        """Makes `route` ("create", "validate-yaml", "preupload", "lfs-batch", "lfs-upload", "commit", ...) fail."""
        self._failures[route] = status

    def clear_failures(self) -> None:
        self._failures.clear()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        return self.repos[repo_key(repo_id, repo_type)].files(revision)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[str]:
        return [oid for oid, _, _ in self.repos[repo_key(repo_id, repo_type)].branches.get(revision, [])]

    def add_repo(self, repo_id: str, files: dict[str, bytes], repo_type: str = "model") -> None:
        """Seeds a repository with one commit of `files` on main."""
        with self._lock:
            repo = Repo(repo_id, private=False, repo_type=repo_type)
            self._commit(repo, "main", dict(files), "seeded by the test")
            self.repos[repo_key(repo_id, repo_type)] = repo

    def routes_called(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    # ---- request handling (called from server threads) --------------------------------------------------------
    def handle(self, method: str, path: str, body: bytes, headers) -> tuple[int, dict[str, str], bytes]:
        path = path.split("?", 1)[0]
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers.get("Authorization"), body))
        for pattern, route_method, route, function in _ROUTES:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                if route in self._failures:
                    return _json(self._failures[route], {"error": f"fake Hub: {route} is set to fail"})
                with self._lock:
                    return function(self, body, headers, **match.groupdict())
        return _json(404, {"error": f"fake Hub: no route for {method} {path}"})

    def _create_repo(self, body, headers):
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES:
            return _json(400, {"error": f"fake Hub: unknown repo type {repo_type!r}"})
        if repo_type == "space" and not payload.get("sdk"):
            return _json(400, {"error": "fake Hub: a space needs an sdk"})
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        key = repo_key(repo_id, repo_type)
        url = f"{self.endpoint}/{key}"
        if key in self.repos:
            return _json(409, {"error": f"You already created this {repo_type} repo", "url": url})
        repo = Repo(
            repo_id, private=payload.get("visibility") == "private", repo_type=repo_type, sdk=payload.get("sdk")
        )
        self._commit(repo, "main", {}, "initial commit")
        self.repos[key] = repo
        return _json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, body, headers):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if match is None:
            return _json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            metadata = yaml.safe_load(match.group(1))
        except yaml.YAMLError as error:
            return _json(400, {"errors": [{"message": f"invalid YAML: {error}"}], "warnings": []})
        if not isinstance(metadata, dict):
            return _json(400, {"errors": [{"message": "metadata must be a YAML mapping"}], "warnings": []})
        return _json(200, {"errors": [], "warnings": []})

    def _repo(self, ns, name, revision=None, type=None):
        repo = self.repos.get(repo_key(f"{ns}/{name}", type[:-1] if type else "model"))  # "spaces" -> "space"
        if repo is None:
            return None, _json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if revision is not None and revision not in repo.branches:
            return None, _json(404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"})
        return repo, None

    def _create_branch(self, body, headers, ns, name, branch, type=None):
        repo, error = self._repo(ns, name, type=type)
        if error:
            return error
        if branch in repo.branches:
            return _json(409, {"error": f"Branch {branch} already exists"})
        repo.branches[branch] = list(repo.branches["main"])
        return _json(200, {})

    def _preupload(self, body, headers, ns, name, revision, type=None):
        repo, error = self._repo(ns, name, revision, type)
        if error:
            return error
        existing = repo.files(revision)
        answers = []
        for entry in json.loads(body)["files"]:
            lfs = self.lfs_threshold is not None and entry["size"] >= self.lfs_threshold
            old = existing.get(entry["path"])
            oid = None
            if old is not None:
                oid = hashlib.sha256(old).hexdigest() if lfs else git_blob_sha1(old)
            answers.append(
                {"path": entry["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return _json(200, {"files": answers, "commitOid": repo.head(revision)})

    def _lfs_batch(self, body, headers, ns, name, type=None):
        repo, error = self._repo(ns, name, type=type)
        if error:
            return error
        payload = json.loads(body)
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            return _json(400, {"message": "fake Hub: only basic uploads"})
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                answer["actions"] = {
                    "upload": {"href": f"{self.endpoint}/lfs-objects/{obj['oid']}"},
                    "verify": {"href": f"{self.endpoint}/lfs-verify"},
                }
            objects.append(answer)
        return _json(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def _lfs_upload(self, body, headers, oid):
        if hashlib.sha256(body).hexdigest() != oid:
            return _json(400, {"error": "fake Hub: uploaded bytes do not match the oid"})
        self.lfs_objects[oid] = body
        return 200, {}, b""

    def _lfs_verify(self, body, headers):
        payload = json.loads(body)
        stored = self.lfs_objects.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            return _json(404, {"error": "fake Hub: LFS object missing or of the wrong size"})
        return _json(200, {})

    def _commit_route(self, body, headers, ns, name, revision, type=None):
        repo, error = self._repo(ns, name, revision, type)
        if error:
            return error
        if "application/x-ndjson" not in headers.get("Content-Type", ""):
            return _json(400, {"error": "fake Hub: commit payload must be NDJSON"})
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return _json(400, {"error": "fake Hub: the first NDJSON line must be the header"})
        files = repo.files(revision)
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                stored = self.lfs_objects.get(value["oid"])
                if stored is None:
                    return _json(422, {"error": f"fake Hub: LFS object of {value['path']} was never uploaded"})
                files[value["path"]] = stored
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: b for p, b in files.items() if not p.startswith(prefix)}
            else:
                return _json(400, {"error": f"fake Hub: unknown commit operation {line['key']!r}"})
        oid = self._commit(repo, revision, files, lines[0]["value"]["summary"])
        return _json(
            200,
            {
                "commitUrl": f"{self.endpoint}/{repo_key(repo.repo_id, repo.repo_type)}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": None,
            },
        )

    def _repo_info(self, body, headers, ns, name, type=None, revision="main"):
        repo, error = self._repo(ns, name, revision, type)
        if error:
            return error
        siblings = [{"rfilename": path} for path in sorted(repo.files(revision))]
        info = {"id": repo.repo_id, "sha": repo.head(revision), "private": repo.private, "siblings": siblings}
        if repo.sdk:
            info["sdk"] = repo.sdk
        return _json(200, info)

    def _resolve(self, body, headers, ns, name, revision, path, type=None):
        repo, error = self._repo(ns, name, revision, type)
        if error:
            return error
        data = repo.files(revision).get(path)
        if data is None:
            return _json(404, {"error": f"Entry not found: {path}"}, {"X-Error-Code": "EntryNotFound"})
        return 200, {"X-Repo-Commit": repo.head(revision), "ETag": f'"{git_blob_sha1(data)}"'}, data

    def _commit(self, repo: Repo, revision: str, files: dict[str, bytes], summary: str) -> str:
        self._commit_counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}@{revision}#{self._commit_counter}".encode()).hexdigest()
        repo.branches.setdefault(revision, []).append((oid, files, summary))
        return oid


_REPO = r"/api/(?P<type>models|spaces|datasets)/(?P<ns>[^/]+)/(?P<name>[^/]+)"
_URL_REPO = r"/(?:(?P<type>spaces|datasets)/)?(?P<ns>[^/]+)/(?P<name>[^/]+)"
_ROUTES = [
    (r"/api/repos/create", "POST", "create", FakeHub._create_repo),
    (r"/api/validate-yaml", "POST", "validate-yaml", FakeHub._validate_yaml),
    (_REPO + r"/branch/(?P<branch>[^/]+)", "POST", "branch", FakeHub._create_branch),
    (_REPO + r"/preupload/(?P<revision>[^/]+)", "POST", "preupload", FakeHub._preupload),
    (_REPO + r"/commit/(?P<revision>[^/]+)", "POST", "commit", FakeHub._commit_route),
    (_REPO + r"/revision/(?P<revision>[^/]+)", "GET", "repo-info", FakeHub._repo_info),
    (_REPO, "GET", "repo-info", FakeHub._repo_info),
    (_URL_REPO + r"\.git/info/lfs/objects/batch", "POST", "lfs-batch", FakeHub._lfs_batch),
    (_URL_REPO + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "GET", "resolve", FakeHub._resolve),
    (_URL_REPO + r"/resolve/(?P<revision>[^/]+)/(?P<path>.+)", "HEAD", "resolve", FakeHub._resolve),
    (r"/lfs-objects/(?P<oid>[0-9a-f]{64})", "PUT", "lfs-upload", FakeHub._lfs_upload),
    (r"/lfs-verify", "POST", "lfs-verify", FakeHub._lfs_verify),
]


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _serve(self) -> None:
        body = self._read_body() if self.command in ("POST", "PUT") else b""
        status, headers, payload = self.hub.handle(self.command, self.path, body, self.headers)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _serve

    def do_HEAD(self) -> None:
        status, headers, payload = self.hub.handle("HEAD", self.path, b"", self.headers)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass
