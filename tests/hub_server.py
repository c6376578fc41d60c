"""A local Hugging Face Hub-compatible HTTP server for tests (standard library only).

It implements the endpoints that `huggingface_hub` calls to create a repository, upload a folder in
one commit (preupload, LFS batch + PUT, ndjson commit), create a branch, and download files back
(model info by revision, tree listing, paths-info, refs, file resolve with the headers the client
expects). Repositories live in memory as a chain of commits, each a full `path -> file` snapshot,
so tests can assert exactly which files a commit holds.

Faults can be injected per endpoint (`HubState.inject_fault("commit")`): the server then reads the
request and closes the socket without answering, which the client sees as a dropped connection.

Usage in tests (see tests/test_hub.py): `LocalHub().start()` serves on a free port of 127.0.0.1 in
a daemon thread (or use the `local_hub` fixture: `from hub_server import local_hub`);
`hub_environment(monkeypatch, hub.url, tmp_path)` points an already imported `huggingface_hub` at it
(subprocesses just need `HF_ENDPOINT=hub.url HF_HUB_DISABLE_XET=1 HF_TOKEN=...`). The token
`hf_test_write_token` belongs to user `test-user` and may write to `test-user/*`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

try:  # the fixture below is for pytest; the server itself needs only the standard library
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

# Files stored through LFS on the real Hub (its default .gitattributes), plus anything large.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".model", ".npy", ".gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
WRITE_TOKEN = "hf_test_write_token"
TEST_USER = "test-user"
DEFAULT_GITATTRIBUTES = b"".join(
    f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n".encode() for suffix in LFS_SUFFIXES
)
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob, as `git hash-object` computes it."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256_hex: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS object."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_hex}\nsize {size}\n".encode()


@dataclass
class StoredFile:
    """One file of a commit: its content and how git would store it (regular blob or LFS)."""

    content: bytes
    is_lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def blob_oid(self) -> str:
        """Git oid of what git stores: the content, or the LFS pointer for LFS files."""
        if self.is_lfs:
            return git_blob_oid(lfs_pointer(self.sha256, len(self.content)))
        return git_blob_oid(self.content)

    @property
    def etag(self) -> str:
        """The ETag the Hub sends: sha256 for LFS files, git oid for regular files."""
        return self.sha256 if self.is_lfs else self.blob_oid

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "path": path, "size": len(self.content), "oid": self.blob_oid}
        if self.is_lfs:
            pointer = lfs_pointer(self.sha256, len(self.content))
            entry["lfs"] = {"oid": self.sha256, "size": len(self.content), "pointerSize": len(pointer)}
        return entry


@dataclass
class Commit:
    """A commit: a full snapshot of the repository's files."""

    oid: str
    parent: str | None
    title: str
    description: str
    files: dict[str, StoredFile]
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    """A repository: its commits (by oid) and branches (name -> commit oid)."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch name or a (full or short) commit oid points to."""
        if revision in self.branches:
            return self.commits[self.branches[revision]]
        if revision in self.commits:
            return self.commits[revision]
        if len(revision) >= 7:
            matches = [oid for oid in self.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return self.commits[matches[0]]
        return None

    def add_commit(self, branch: str, title: str, description: str, files: dict[str, StoredFile]) -> Commit:
        parent = self.branches.get(branch)
        digest = hashlib.sha1()
        digest.update(f"{self.repo_id}\0{parent}\0{title}\0{time.time_ns()}\0{len(self.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{files[path].blob_oid}\0".encode())
        commit = Commit(oid=digest.hexdigest(), parent=parent, title=title, description=description, files=files)
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit

    def history(self, branch: str = "main") -> list[Commit]:
        """Commits reachable from `branch`, newest first."""
        commits = []
        oid = self.branches.get(branch)
        while oid is not None:
            commits.append(self.commits[oid])
            oid = self.commits[oid].parent
        return commits


class HubState:
    """Everything the server holds: users' tokens, repositories, LFS objects, injected faults, a log."""

    def __init__(self, tokens: dict[str, tuple[str, str]] | None = None) -> None:
        # token -> (user name, role); role "write" may create and commit, "read" may only download
        self.tokens = tokens if tokens is not None else {WRITE_TOKEN: (TEST_USER, "write")}
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.faults: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()

    def inject_fault(self, endpoint: str, times: int = 1) -> None:
        """Drop the connection on the next `times` requests to `endpoint`.

        Endpoints: "create", "preupload", "lfs_batch", "lfs_put", "commit", "info", "tree", "resolve".
        """
        with self.lock:
            self.faults[endpoint] = self.faults.get(endpoint, 0) + times

    def take_fault(self, endpoint: str) -> bool:
        with self.lock:
            remaining = self.faults.get(endpoint, 0)
            if remaining <= 0:
                return False
            self.faults[endpoint] = remaining - 1
            return True

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of `repo_id` at `revision`, as `path -> content` (for assertions in tests)."""
        repo = self.repo(repo_id, repo_type)
        if repo is None:
            raise KeyError(f"no {repo_type} repo {repo_id!r} on the local hub")
        commit = repo.resolve(revision)
        if commit is None:
            raise KeyError(f"no revision {revision!r} in {repo_id!r}")
        return {path: stored.content for path, stored in commit.files.items()}


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes one HTTP request to the endpoint that `huggingface_hub` expects."""

    protocol_version = "HTTP/1.1"
    server: LocalHubServer

    # ----------------------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args) -> None:
        """Silence the default stderr access log (tests read `HubState.requests` instead)."""

    @property
    def state(self) -> HubState:
        return self.server.state

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def read_body(self) -> bytes:
        """Read the request body, whether sent with Content-Length or chunked."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline().strip()
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the blank line
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
             content_type: str = "application/json", head_only: bool = False,
             content_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def send_json(self, status: int, payload, headers: dict[str, str] | None = None, head_only: bool = False) -> None:
        self.send(status, json.dumps(payload).encode(), headers=headers, head_only=head_only)

    def send_error_json(self, status: int, message: str, error_code: str | None = None,
                        headers: dict[str, str] | None = None, head_only: bool = False) -> None:
        extra = {"X-Error-Message": message, **(headers or {})}
        if error_code is not None:
            extra["X-Error-Code"] = error_code
        self.send_json(status, {"error": message}, headers=extra, head_only=head_only)

    def drop_connection(self) -> None:
        """Simulate a network failure: close the socket without sending any response."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ----------------------------------------------------------------------------- auth
    def caller(self) -> tuple[str | None, str | None, bool]:
        """(user, role, bad_token): the token's owner and role, or bad_token when it is unknown."""
        authorization = self.headers.get("Authorization", "")
        if not authorization.lower().startswith("bearer "):
            return None, None, False
        token = authorization[len("bearer "):].strip()
        if token in self.state.tokens:
            user, role = self.state.tokens[token]
            return user, role, False
        return None, None, True

    def require_write(self, namespace: str | None = None) -> str | None:
        """The writing user, or None after answering 401/403."""
        user, role, bad_token = self.caller()
        if bad_token:
            self.send_error_json(401, INVALID_CREDENTIALS)
            return None
        if user is None:
            self.send_error_json(401, "You must be authenticated to write to a repository")
            return None
        if role != "write" or (namespace is not None and namespace != user):
            self.send_error_json(403, "You don't have the rights to write to this repository")
            return None
        return user

    def readable_repo(self, repo_type: str, repo_id: str, head_only: bool = False) -> Repo | None:
        """The repo if the caller may read it, or None after answering 401/404 like the Hub."""
        user, _, bad_token = self.caller()
        if bad_token:
            self.send_error_json(401, INVALID_CREDENTIALS, head_only=head_only)
            return None
        repo = self.state.repo(repo_id, repo_type)
        if repo is None or (repo.private and user != repo_id.split("/")[0]):
            self.send_error_json(404, "Repository not found", "RepoNotFound", head_only=head_only)
            return None
        return repo

    def revision_commit(self, repo: Repo, revision: str, head_only: bool = False) -> Commit | None:
        commit = repo.resolve(revision)
        if commit is None:
            self.send_error_json(404, f"Invalid rev id: {revision}", "RevisionNotFound", head_only=head_only)
        return commit

    # ----------------------------------------------------------------------------- routing
    def do_HEAD(self) -> None:
        self.route("HEAD")

    def do_GET(self) -> None:
        self.route("GET")

    def do_POST(self) -> None:
        self.route("POST")

    def do_PUT(self) -> None:
        self.route("PUT")

    def route(self, method: str) -> None:
        split = urlsplit(self.path)
        raw_parts = [part for part in split.path.split("/") if part]
        query = parse_qs(split.query)
        with self.state.lock:
            self.state.requests.append((method, split.path))
        try:
            self.dispatch(method, raw_parts, query)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True

    def dispatch(self, method: str, parts: list[str], query: dict) -> None:
        # Percent-decoding happens per segment so that quoted revisions ("refs%2Fpr%2F1") stay whole.
        decoded = [unquote(part) for part in parts]
        if method == "POST" and decoded[:3] == ["api", "repos", "create"]:
            return self.create_repo()
        if method == "POST" and decoded[:2] == ["api", "validate-yaml"]:
            self.read_body()
            return self.send_json(200, {"errors": [], "warnings": []})
        if method == "GET" and decoded[:2] == ["api", "whoami-v2"]:
            return self.whoami()
        if method == "PUT" and decoded[:1] == ["lfs-upload"] and len(decoded) == 2:
            return self.lfs_put(decoded[1])
        if decoded[:1] == ["api"] and len(decoded) >= 4 and decoded[1] in ("models", "datasets", "spaces"):
            repo_type = decoded[1][:-1]
            repo_id = "/".join(decoded[2:4])
            rest = decoded[4:]
            return self.repo_api(method, repo_type, repo_id, rest, query)
        # LFS batch: /{prefix}{ns}/{name}.git/info/lfs/objects/batch
        if method == "POST" and decoded[-4:] == ["info", "lfs", "objects", "batch"]:
            repo_type, repo_path = self.split_repo_prefix(decoded[:-4])
            if len(repo_path) == 2 and repo_path[1].endswith(".git"):
                return self.lfs_batch(repo_type, f"{repo_path[0]}/{repo_path[1][:-4]}")
        # File resolve: /{prefix}{ns}/{name}/resolve/{revision}/{path...}
        repo_type, repo_path = self.split_repo_prefix(decoded)
        if method in ("GET", "HEAD") and len(repo_path) >= 5 and repo_path[2] == "resolve":
            return self.resolve_file(method, repo_type, f"{repo_path[0]}/{repo_path[1]}", repo_path[3],
                                     "/".join(repo_path[4:]))
        self.read_body()
        self.send_error_json(404, f"local hub: no route for {method} {self.path}")

    @staticmethod
    def split_repo_prefix(parts: list[str]) -> tuple[str, list[str]]:
        if parts[:1] == ["datasets"]:
            return "dataset", parts[1:]
        if parts[:1] == ["spaces"]:
            return "space", parts[1:]
        return "model", parts

    def repo_api(self, method: str, repo_type: str, repo_id: str, rest: list[str], query: dict) -> None:
        if method == "GET" and not rest:
            return self.repo_info(repo_type, repo_id, "main")
        if method == "GET" and rest[0] == "revision" and len(rest) >= 2:
            return self.repo_info(repo_type, repo_id, "/".join(rest[1:]))
        if method == "GET" and rest[0] == "tree" and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            return self.tree(repo_type, repo_id, rest[1], "/".join(rest[2:]), recursive)
        if method == "GET" and rest[0] == "refs":
            return self.refs(repo_type, repo_id)
        if method == "GET" and rest[0] == "commits" and len(rest) >= 2:
            return self.commits(repo_type, repo_id, rest[1])
        if method == "POST" and rest[0] == "paths-info" and len(rest) >= 2:
            return self.paths_info(repo_type, repo_id, rest[1])
        if method == "POST" and rest[0] == "preupload" and len(rest) >= 2:
            return self.preupload(repo_type, repo_id, rest[1])
        if method == "POST" and rest[0] == "commit" and len(rest) >= 2:
            return self.commit(repo_type, repo_id, rest[1], query)
        if method == "POST" and rest[0] == "branch" and len(rest) >= 2:
            return self.create_branch(repo_type, repo_id, rest[1])
        self.read_body()
        self.send_error_json(404, f"local hub: no route for {method} {self.path}")

    # ----------------------------------------------------------------------------- endpoints
    def whoami(self) -> None:
        user, role, bad_token = self.caller()
        if bad_token or user is None:
            return self.send_error_json(401, INVALID_CREDENTIALS)
        self.send_json(200, {"type": "user", "name": user, "auth": {"accessToken": {"role": role}}})

    def create_repo(self) -> None:
        payload = json.loads(self.read_body() or b"{}")
        if self.state.take_fault("create"):
            return self.drop_connection()
        user = self.require_write(payload.get("organization"))
        if user is None:
            return
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.base_url}/{prefix}{repo_id}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self.state.lock:
            if self.state.repo(repo_id, repo_type) is not None:
                return self.send_json(409, {"error": "You already created this model repo", "url": url},
                                      headers={"X-Error-Message": "You already created this model repo"})
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private)
            # Like the Hub: a new repository starts with one commit holding .gitattributes.
            repo.add_commit("main", "initial commit", "",
                            {".gitattributes": StoredFile(DEFAULT_GITATTRIBUTES, is_lfs=False)})
            self.state.repos[(repo_type, repo_id)] = repo
        self.send_json(200, {"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        if self.state.take_fault("info"):
            return self.drop_connection()
        repo = self.readable_repo(repo_type, repo_id)
        if repo is None:
            return
        commit = self.revision_commit(repo, revision)
        if commit is None:
            return
        self.send_json(200, {
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.oid,
            "private": repo.private,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def tree(self, repo_type: str, repo_id: str, revision: str, path: str, recursive: bool) -> None:
        if self.state.take_fault("tree"):
            return self.drop_connection()
        repo = self.readable_repo(repo_type, repo_id)
        if repo is None:
            return
        commit = self.revision_commit(repo, revision)
        if commit is None:
            return
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries, folders = [], set()
        for file_path in sorted(commit.files):
            if not file_path.startswith(prefix):
                continue
            relative = file_path[len(prefix):]
            parts = relative.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                entries.append(commit.files[file_path].tree_entry(file_path))
        if prefix and not entries and not folders:
            return self.send_error_json(404, f"{path} does not exist", "EntryNotFound")
        folder_entries = [{"type": "directory", "path": folder, "oid": git_blob_oid(folder.encode())}
                          for folder in sorted(folders)]
        self.send_json(200, folder_entries + entries)

    def paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        form = parse_qs(self.read_body().decode())
        repo = self.readable_repo(repo_type, repo_id)
        if repo is None:
            return
        commit = self.revision_commit(repo, revision)
        if commit is None:
            return
        entries = []
        for path in form.get("paths", []):
            if path in commit.files:
                entries.append(commit.files[path].tree_entry(path))
            elif any(file_path.startswith(path.rstrip("/") + "/") for file_path in commit.files):
                entries.append({"type": "directory", "path": path, "oid": git_blob_oid(path.encode())})
        self.send_json(200, entries)

    def refs(self, repo_type: str, repo_id: str) -> None:
        repo = self.readable_repo(repo_type, repo_id)
        if repo is None:
            return
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                    for name, oid in sorted(repo.branches.items())]
        self.send_json(200, {"branches": branches, "converts": [], "tags": []})

    def commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self.readable_repo(repo_type, repo_id)
        if repo is None:
            return
        if self.revision_commit(repo, revision) is None:
            return
        branch = revision if revision in repo.branches else None
        history = repo.history(branch) if branch else [repo.resolve(revision)]
        self.send_json(200, [{
            "id": commit.oid, "title": commit.title, "message": commit.description, "authors": [],
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
        } for commit in history])

    def create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        payload = json.loads(self.read_body() or b"{}")
        if self.require_write(repo_id.split("/")[0]) is None:
            return
        repo = self.state.repo(repo_id, repo_type)
        if repo is None:
            return self.send_error_json(404, "Repository not found", "RepoNotFound")
        with self.state.lock:
            if branch in repo.branches:
                return self.send_error_json(409, f"Reference already exists: refs/heads/{branch}")
            start = self.revision_commit(repo, payload.get("startingPoint") or "main")
            if start is None:
                return
            repo.branches[branch] = start.oid
        self.send_json(200, {})

    def preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        payload = json.loads(self.read_body() or b"{}")
        if self.state.take_fault("preupload"):
            return self.drop_connection()
        if self.require_write(repo_id.split("/")[0]) is None:
            return
        repo = self.state.repo(repo_id, repo_type)
        if repo is None:
            return self.send_error_json(404, "Repository not found", "RepoNotFound")
        commit = self.revision_commit(repo, revision)
        if commit is None:
            return
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item["size"])
            is_lfs = path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE
            existing = commit.files.get(path)
            remote_oid = None
            if existing is not None:
                remote_oid = existing.sha256 if existing.is_lfs else existing.blob_oid
            files.append({"path": path, "uploadMode": "lfs" if is_lfs else "regular",
                          "shouldIgnore": False, "oid": remote_oid})
        self.send_json(200, {"files": files, "commitOid": commit.oid})

    def lfs_batch(self, repo_type: str, repo_id: str) -> None:
        payload = json.loads(self.read_body() or b"{}")
        if self.state.take_fault("lfs_batch"):
            return self.drop_connection()
        if self.require_write(repo_id.split("/")[0]) is None:
            return
        if self.state.repo(repo_id, repo_type) is None:
            return self.send_error_json(404, "Repository not found", "RepoNotFound")
        objects = []
        for item in payload.get("objects", []):
            entry = {"oid": item["oid"], "size": int(item["size"]), "authenticated": True}
            if item["oid"] not in self.state.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.base_url}/lfs-upload/{item['oid']}", "header": {}}}
            objects.append(entry)
        body = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        self.send(200, json.dumps(body).encode(), content_type="application/vnd.git-lfs+json")

    def lfs_put(self, oid: str) -> None:
        content = self.read_body()
        if self.state.take_fault("lfs_put"):
            return self.drop_connection()
        if hashlib.sha256(content).hexdigest() != oid:
            return self.send_error_json(400, f"LFS object content does not match its oid {oid}")
        with self.state.lock:
            self.state.lfs_objects[oid] = content
        self.send(200, b"", content_type="text/plain")

    def commit(self, repo_type: str, repo_id: str, revision: str, query: dict) -> None:
        body = self.read_body()
        if self.state.take_fault("commit"):
            return self.drop_connection()
        if self.require_write(repo_id.split("/")[0]) is None:
            return
        repo = self.state.repo(repo_id, repo_type)
        if repo is None:
            return self.send_error_json(404, "Repository not found", "RepoNotFound")
        if revision not in repo.branches:
            return self.send_error_json(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        header: dict = {}
        with self.state.lock:
            files = dict(repo.commits[repo.branches[revision]].files)
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    header = value
                elif key == "file":
                    content = base64.b64decode(value["content"]) if value.get("encoding") == "base64" \
                        else value["content"].encode()
                    files[value["path"]] = StoredFile(content, is_lfs=False)
                elif key == "lfsFile":
                    content = self.state.lfs_objects.get(value["oid"])
                    if content is None:
                        return self.send_error_json(400, f"LFS object {value['oid']} was never uploaded")
                    files[value["path"]] = StoredFile(content, is_lfs=True)
                elif key == "deletedFile":
                    if value["path"] not in files:
                        return self.send_error_json(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    folder = value["path"].rstrip("/") + "/"
                    files = {path: stored for path, stored in files.items() if not path.startswith(folder)}
                else:
                    return self.send_error_json(400, f"unknown commit operation {key!r}")
            parent = header.get("parentCommit")
            if parent is not None and not repo.branches[revision].startswith(parent):
                return self.send_error_json(412, "Parent commit is not the head of the branch")
            commit = repo.add_commit(revision, header.get("summary", ""), header.get("description", ""), files)
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        self.send_json(200, {"commitUrl": f"{self.base_url}/{prefix}{repo_id}/commit/{commit.oid}",
                             "commitOid": commit.oid, "success": True, "pullRequestUrl": None})

    def resolve_file(self, method: str, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        head_only = method == "HEAD"
        if self.state.take_fault("resolve"):
            return self.drop_connection()
        repo = self.readable_repo(repo_type, repo_id, head_only=head_only)
        if repo is None:
            return
        commit = self.revision_commit(repo, revision, head_only=head_only)
        if commit is None:
            return
        stored = commit.files.get(path)
        if stored is None:
            return self.send_error_json(404, "Entry not found", "EntryNotFound",
                                        headers={"X-Repo-Commit": commit.oid}, head_only=head_only)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.etag}"', "Accept-Ranges": "bytes"}
        if stored.is_lfs:
            headers["X-Linked-Etag"] = f'"{stored.sha256}"'
            headers["X-Linked-Size"] = str(len(stored.content))
        content = stored.content
        status = 200
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and not head_only:
            start_text, _, end_text = range_header[len("bytes="):].partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content = content[start:end + 1]
            status = 206
        self.send(status, content, headers=headers, content_type="application/octet-stream",
                  head_only=head_only, content_length=len(content))


class LocalHubServer(ThreadingHTTPServer):
    """The HTTP server; `state` is shared by all request handlers."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, state: HubState) -> None:
        super().__init__(("127.0.0.1", 0), HubRequestHandler)
        self.state = state


class LocalHub:
    """A running local Hub: `url` to point `HF_ENDPOINT` at, `state` to inspect and inject faults."""

    def __init__(self, state: HubState | None = None) -> None:
        self.state = state if state is not None else HubState()
        self.server = LocalHubServer(self.state)
        host, port = self.server.server_address[:2]
        self.url = f"http://{host}:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="local-hub", daemon=True)

    def start(self) -> LocalHub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        return f"{self.url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(path)}"


def hub_environment(monkeypatch, url: str, home: Path, token: str = WRITE_TOKEN) -> None:
    """Point this process's (possibly already imported) huggingface_hub at the server at ``url``.

    Sets HF_ENDPOINT / HF_TOKEN / HF_HUB_DISABLE_XET / HF_HOME for subprocesses and patches the
    module-level values `huggingface_hub.constants` computed at import (endpoint, URL template,
    trusted hosts, Xet switch, offline flag, cache and token paths) through ``monkeypatch``.
    """
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    values = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {urlsplit(url).hostname},
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(Path(home) / "hub"),
        "HF_TOKEN_PATH": str(Path(home) / "token"),
        "HF_STORED_TOKENS_PATH": str(Path(home) / "stored_tokens"),
    }
    for name, value in values.items():
        monkeypatch.setattr(constants, name, value)


if pytest is not None:

    @pytest.fixture
    def local_hub(monkeypatch, tmp_path):
        """A fresh local Hub for one test, with huggingface_hub pointed at it and a fresh HF_HOME."""
        hub = LocalHub().start()
        hub_environment(monkeypatch, hub.url, tmp_path / "hf_home")
        yield hub
        hub.stop()


if __name__ == "__main__":  # manual use: python tests/hub_server.py, then HF_ENDPOINT=<printed url>
    hub = LocalHub().start()
    print(hub.url, flush=True)
    print("tokens:", ", ".join(hub.state.tokens), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        hub.stop()
