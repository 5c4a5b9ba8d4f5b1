"""A fake Hugging Face Hub: a local HTTP server speaking the slice of the Hub API that the real clients use.

Tests point `HF_ENDPOINT` at it (fixture `fake_hub` in conftest.py), so that `huggingface_hub`, `transformers` and
`datasets` run their own, unmodified upload and download code without touching the network. Served endpoints:

- `GET  /api/whoami-v2`, `POST /api/repos/create`, `POST /api/validate-yaml`
- `GET  /api/{models,datasets,spaces}/{repo_id}[/revision/{rev}]`: repo info (sha, siblings, card data)
- `GET  /api/{type}s/{repo_id}/tree/{rev}[/{path}]`, `POST /api/{type}s/{repo_id}/paths-info/{rev}`: listings
- `POST /api/{type}s/{repo_id}/preupload/{rev}`, `POST /api/{type}s/{repo_id}/commit/{rev}` (ndjson): commits
- `POST /[{datasets,spaces}/]{repo_id}.git/info/lfs/objects/batch`, `PUT /lfs-upload/{sha256}`: LFS "basic" uploads
- `GET|HEAD /[{datasets,spaces}/]{repo_id}/resolve/{rev}/{path}`: file contents (with `Range` support)

As on the Hub, files matching the LFS patterns of `.gitattributes` (or above 10 MiB) go through LFS: preupload
answers `uploadMode: "lfs"`, the client PUTs the bytes to the URL given by the batch endpoint, and the commit
references them by sha256 (`datasets` deletes its temporary parquet shards between the two, so this path is needed);
other files are sent inline, base64, in the commit. The client must not use Xet (`HF_HUB_DISABLE_XET=1`): answers
never carry Xet headers. Downloads are served directly (no CDN redirect), with the LFS sha256 as ETag of LFS files.
Repositories live in memory; each commit is a full snapshot `{path: bytes}` with a new 40-hex commit id. Only `main`
exists and pull requests are refused. Any other request gets a 404 whose message names the unimplemented route.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.parquet", "*.arrow", "*.zip", "*.npy")
LFS_BATCH = ["info", "lfs", "objects", "batch"]  # after {repo_id}.git/
LFS_THRESHOLD = 10 * 2**20  # bytes; bigger files always go through LFS
# What the Hub commits first in every new repository.
INITIAL_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
_FRONT_MATTER = re.compile(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", re.DOTALL)


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob: the Hub's `oid` in listings and the ETag of a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def is_lfs(path: str, size: int) -> bool:
    return size > LFS_THRESHOLD or any(fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in LFS_PATTERNS)


def file_etag(path: str, content: bytes) -> str:
    """The Hub's ETag of a file: sha256 of LFS files, git blob id of the others (the client compares it on upload)."""
    return hashlib.sha256(content).hexdigest() if is_lfs(path, len(content)) else git_blob_sha1(content)


def parse_card_data(readme: bytes) -> dict | None:
    """The YAML metadata block of a README.md (None when there is none); raises yaml.YAMLError when it is invalid."""
    match = _FRONT_MATTER.match(readme.decode("utf-8"))
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    if data is not None and not isinstance(data, dict):
        raise yaml.YAMLError(f"the metadata block must be a mapping, got {type(data).__name__}")
    return data


class HubError(Exception):
    """An HTTP error answered the way the Hub does: status code, `X-Error-Code` header and a JSON error body.

    `commit` goes to the `X-Repo-Commit` header (the client caches the absence of a file under it); `extra` is added
    to the JSON body (the url of an existing repo on a 409, which `create_repo(exist_ok=True)` reads).
    """

    def __init__(self, status: int, message: str, error_code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.error_code, self.commit, self.extra = status, message, error_code, commit, extra


@dataclass
class Repo:
    """One repository: its commits as full snapshots and the head of `main`."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit id -> {path: content}
    head: str = ""

    def resolve(self, revision: str) -> str:
        """The commit id a revision (branch name or commit id) points to."""
        if revision == "main":
            return self.head
        if revision in self.commits:
            return revision
        raise HubError(404, f"Revision {revision!r} not found in {self.repo_id}", "RevisionNotFound")

    def commit(self, files: dict[str, bytes], message: str) -> str:
        """Record a new snapshot on `main` and return its commit id."""
        digest = hashlib.sha1(f"{self.repo_type}/{self.repo_id}\n{self.head}\n{len(self.commits)}\n{message}".encode())
        for path in sorted(files):
            digest.update(f"\n{path}\n{git_blob_sha1(files[path])}".encode())
        self.head = digest.hexdigest()
        self.commits[self.head] = files
        return self.head


def _entry(path: str, files: dict[str, bytes]) -> dict | None:
    """Tree entry of a file or folder of a snapshot, in the Hub's JSON shape (None when the path does not exist)."""
    if path in files:
        content = files[path]
        entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}
        if is_lfs(path, len(content)):
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        return entry
    prefix = path.rstrip("/") + "/"
    children = sorted(p for p in files if p.startswith(prefix))
    if not path or not children:
        return None
    oid = hashlib.sha1("".join(git_blob_sha1(files[p]) for p in children).encode()).hexdigest()
    return {"type": "directory", "path": path, "size": 0, "oid": oid}


def _list_tree(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict]:
    """Entries under `folder` ("" = root): its direct children, or everything below it when recursive."""
    prefix = folder.rstrip("/") + "/" if folder else ""
    paths = set()
    for path in files:
        if path.startswith(prefix):
            parts = path[len(prefix) :].split("/")
            paths.update(prefix + "/".join(parts[: i + 1]) for i in range(len(parts) if recursive else 1))
    entries = [_entry(p, files) for p in sorted(paths)]
    return sorted(entries, key=lambda e: e["type"] != "directory")  # folders first, as the Hub lists them


class FakeHub:
    """In-memory Hub repositories served over HTTP on 127.0.0.1 (a free port) from a background thread.

    Use as a context manager, or `start()` / `stop()`. `url` is the value for `HF_ENDPOINT`; `requests` logs
    "METHOD /path" of every request received, which helps when a client starts calling an endpoint not served here.
    """

    user = "fake-user"

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content, uploaded before the commit that uses them
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def repo_url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.url}/{repo_id}" if repo_type == "model" else f"{self.url}/{repo_type}s/{repo_id}"

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"{repo_type.capitalize()} repository {repo_id!r} not found", "RepoNotFound")
        return repo

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The snapshot `{path: content}` of a repository at a revision."""
        repo = self.get_repo(repo_type, repo_id)
        return repo.commits[repo.resolve(revision)]

    # Handlers of the routes: each returns a JSON-serialisable body (status 200) or raises HubError.

    def whoami(self) -> dict:
        auth = {"type": "access_token", "accessToken": {"displayName": "fake-token", "role": "write"}}
        return {"type": "user", "id": "0" * 24, "name": self.user, "fullname": "Fake User", "orgs": [], "auth": auth}

    def create_repo(self, payload: dict) -> dict:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.user}/{payload['name']}"
        url = self.repo_url(repo_type, repo_id)
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        repo = Repo(repo_type, repo_id, private=payload.get("visibility", "public") != "public")
        repo.commit({".gitattributes": INITIAL_GITATTRIBUTES}, "initial commit")
        self.repos[(repo_type, repo_id)] = repo
        return {"url": url, "name": repo_id, "id": repo_id}

    @staticmethod
    def validate_yaml(payload: dict) -> dict:
        try:
            parse_card_data(payload["content"].encode())
        except yaml.YAMLError as error:
            message = f"Invalid YAML metadata in README.md: {error}"
            raise HubError(400, message, errors=[{"message": message}]) from error
        return {"warnings": []}

    @staticmethod
    def repo_info(repo: Repo, revision: str) -> dict:
        commit = repo.resolve(revision)
        files = repo.commits[commit]
        siblings = []
        for entry in (_entry(path, files) for path in sorted(files)):
            sibling = {"rfilename": entry["path"], "size": entry["size"], "blobId": entry["oid"]}
            if "lfs" in entry:  # repo info names the LFS sha256 "sha256" where tree listings name it "oid"
                sibling["lfs"] = {"sha256": entry["lfs"]["oid"], **entry["lfs"]}
            siblings.append(sibling)
        info = {"id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit, "private": repo.private}
        info.update(disabled=False, gated=False, downloads=0, likes=0, tags=[], siblings=siblings)
        if "README.md" in files:
            info["cardData"] = parse_card_data(files["README.md"])
        return info

    @staticmethod
    def tree(repo: Repo, revision: str, folder: str, recursive: bool) -> list[dict]:
        files = repo.commits[repo.resolve(revision)]
        if folder and (folder in files or _entry(folder, files) is None):
            raise HubError(404, f"Folder {folder!r} not found at {revision}", "EntryNotFound")
        return _list_tree(files, folder, recursive)

    @staticmethod
    def paths_info(repo: Repo, revision: str, paths: list[str]) -> list[dict]:
        files = repo.commits[repo.resolve(revision)]
        return [entry for entry in (_entry(p, files) for p in paths) if entry is not None]

    @staticmethod
    def preupload(repo: Repo, revision: str, payload: dict) -> dict:
        files = repo.commits[repo.resolve(revision)]
        modes = []
        for item in payload["files"]:
            path = item["path"]
            mode = {"path": path, "uploadMode": "lfs" if is_lfs(path, item["size"]) else "regular"}
            mode["shouldIgnore"] = False
            if path in files:
                mode["oid"] = file_etag(path, files[path])
            modes.append(mode)
        return {"files": modes}

    def lfs_batch(self, payload: dict) -> dict:
        if payload.get("operation") != "upload" or "basic" not in payload.get("transfers", ["basic"]):
            raise HubError(400, "The fake Hub only accepts LFS uploads with the 'basic' transfer")
        objects = []
        for obj in payload["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:
                answer["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(answer)
        return {"transfer": "basic", "objects": objects}

    def lfs_upload(self, oid: str, body: bytes) -> dict:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match its sha256 {oid}")
        self.lfs_objects[oid] = body
        return {}

    def commit(self, repo: Repo, revision: str, body: bytes) -> dict:
        if revision != "main":
            raise HubError(400, f"The fake Hub only commits to 'main', not to {revision!r}")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "Commit payload must start with a 'header' line")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, repo.head):
            raise HubError(412, f"Parent commit {header['parentCommit']} is not the head of main ({repo.head})")
        files = dict(repo.commits[repo.head])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file" and value.get("encoding") == "base64":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} of {value['path']!r} was never uploaded")
                files[value["path"]] = self.lfs_objects[value["oid"]]
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                files = {p: c for p, c in files.items() if not p.startswith(prefix)}
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        commit_id = repo.commit(files, header["summary"])
        url = f"{self.repo_url(repo.repo_type, repo.repo_id)}/commit/{commit_id}"
        return {"success": True, "commitOid": commit_id, "commitUrl": url, "pullRequestUrl": None}


class _Handler(BaseHTTPRequestHandler):
    """Parses a request, routes it to the FakeHub and writes the answer (or a Hub-style error)."""

    protocol_version = "HTTP/1.1"  # keep-alive; every answer sets Content-Length
    server: ThreadingHTTPServer

    def log_message(self, format: str, *args) -> None:
        """Silence the default per-request line on stderr (requests are logged in `FakeHub.requests`)."""

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def _read_body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:  # the clients always send Content-Length today
            self.close_connection = True
            raise HubError(411, f"The fake Hub needs a Content-Length, got Transfer-Encoding for {self.path}")
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self, method: str) -> None:
        hub: FakeHub = self.server.hub
        url = urlsplit(self.path)
        hub.requests.append(f"{method} {url.path}")
        parts = [unquote(s) for s in url.path.strip("/").split("/")]
        try:
            body = self._read_body()
            with hub.lock:
                self._route(hub, method, parts, parse_qs(url.query), body)
        except HubError as error:
            headers = {"X-Error-Message": " ".join(error.message.split())}  # a header value is one line
            if error.error_code:
                headers["X-Error-Code"] = error.error_code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            payload = {"error": error.message, **error.extra}
            self._send(error.status, json.dumps(payload).encode(), headers, method)

    def _route(self, hub: FakeHub, method: str, parts: list[str], query: dict, body: bytes) -> None:
        route = (method, *parts[:2])
        if route == ("GET", "api", "whoami-v2"):
            return self._json(hub.whoami())
        if route == ("POST", "api", "repos") and parts[2:] == ["create"]:
            return self._json(hub.create_repo(json.loads(body)))
        if route == ("POST", "api", "validate-yaml"):
            return self._json(hub.validate_yaml(json.loads(body)))
        if route[:2] == ("PUT", "lfs-upload") and len(parts) == 2:
            return self._json(hub.lfs_upload(parts[1], body))
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in REPO_TYPES:
            repo = hub.get_repo(REPO_TYPES[parts[1]], "/".join(parts[2:4]))
            return self._route_api(hub, method, repo, parts[4:], query, body)
        # Repository routes outside /api: [datasets/|spaces/]{namespace}/{name}[.git]/...
        repo_type = REPO_TYPES[parts[0]] if parts[0] in ("datasets", "spaces") else "model"
        parts = parts[1:] if repo_type != "model" else parts
        if method == "POST" and len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == LFS_BATCH:
            hub.get_repo(repo_type, f"{parts[0]}/{parts[1].removesuffix('.git')}")
            return self._json(hub.lfs_batch(json.loads(body)))
        if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
            repo = hub.get_repo(repo_type, "/".join(parts[:2]))
            return self._resolve(repo, parts[3], "/".join(parts[4:]), method)
        raise HubError(404, f"The fake Hub does not implement {method} {self.path}")

    def _route_api(self, hub: FakeHub, method: str, repo: Repo, rest: list[str], query: dict, body: bytes) -> None:
        action = rest[0] if rest else ""
        if method == "GET" and (not rest or (action == "revision" and len(rest) == 2)):
            return self._json(hub.repo_info(repo, rest[1] if rest else "main"))
        if method == "GET" and action == "tree" and len(rest) >= 2:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            return self._json(hub.tree(repo, rest[1], "/".join(rest[2:]), recursive))
        if method == "POST" and action == "paths-info" and len(rest) == 2:
            return self._json(hub.paths_info(repo, rest[1], parse_qs(body.decode()).get("paths", [])))
        if method == "POST" and action in ("preupload", "commit") and len(rest) == 2:
            if query.get("create_pr"):
                raise HubError(400, "The fake Hub does not support pull requests")
            if action == "preupload":
                return self._json(hub.preupload(repo, rest[1], json.loads(body)))
            return self._json(hub.commit(repo, rest[1], body))
        raise HubError(404, f"The fake Hub does not implement {method} {self.path}")

    def _resolve(self, repo: Repo, revision: str, path: str, method: str) -> None:
        commit = repo.resolve(revision)
        content = repo.commits[commit].get(path)
        if content is None:
            raise HubError(404, f"Entry {path!r} not found in {repo.repo_id} at {revision}", "EntryNotFound", commit)
        headers = {"X-Repo-Commit": commit, "ETag": f'"{file_etag(path, content)}"', "Accept-Ranges": "bytes"}
        status, byte_range = 200, re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if byte_range:
            start = int(byte_range.group(1))
            end = min(int(byte_range.group(2) or len(content) - 1), len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            status, content = 206, content[start : end + 1]
        self._send(status, content, headers | {"Content-Type": "application/octet-stream"}, method)

    def _json(self, payload: dict | list) -> None:
        self._send(200, json.dumps(payload).encode(), {}, self.command)

    def _send(self, status: int, body: bytes, headers: dict[str, str], method: str) -> None:
        self.send_response(status)
        headers.setdefault("Content-Type", "application/json")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)
