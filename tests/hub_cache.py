"""A real Hugging Face cache, filled by huggingface_hub's own snapshot_download from a tiny
local stand-in for the hub's HTTP API, so that the tests of Runpod's cached models
(MODEL=org/name read from /runpod-volume/huggingface-cache/hub) read the very layout
huggingface_hub writes: blobs/, refs/, snapshots/COMMIT/ of symlinks.

The stand-in serves one local model folder as ``repo_id`` at any number of commits (the
same files under each), and what huggingface_hub 2.4 asks for:

* ``GET /api/models/{repo}/revision/{rev}``: the commit a branch or commit names (sha,
  siblings);
* ``GET /api/models/{repo}/tree/{commit}``: the files, with size and blob id;
* ``HEAD``/``GET /{repo}/resolve/{commit}/{file}``: X-Repo-Commit, ETag and
  Content-Length (file_download.get_hf_file_metadata), then the bytes.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

# Two made-up commits: the order of make_cache's downloads makes the second the newer.
COMMITS = ["1" * 8 + "a" * 32, "2" * 8 + "b" * 32]
# The same content under each commit: a real cache then holds each blob once.
_DOWNLOAD = """
import json, sys
from huggingface_hub import snapshot_download
args = json.loads(sys.argv[1])
print(snapshot_download(args["repo_id"], revision=args["revision"],
                        cache_dir=args["cache_dir"], endpoint=args["endpoint"]))
"""


class FakeHub:
    """The hub's API for ``repo_id`` = the files of ``model_dir``; ``branch`` points at
    ``head`` (set it before each download)."""

    def __init__(self, repo_id: str, model_dir: Path, branch: str = "main") -> None:
        self.repo_id, self.model_dir, self.branch = repo_id, Path(model_dir), branch
        self.head = ""
        self.files = {p.relative_to(self.model_dir).as_posix(): p
                      for p in sorted(self.model_dir.rglob("*")) if p.is_file()}
        self._etags: dict[str, str] = {}
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def etag(self, name: str) -> str:
        if name not in self._etags:
            digest = hashlib.sha256()
            with open(self.files[name], "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._etags[name] = digest.hexdigest()
        return self._etags[name]

    def commit(self, rev: str) -> str | None:
        rev = urllib.parse.unquote(rev)
        if rev == self.branch:
            return self.head or None
        return rev if rev in COMMITS or len(rev) == 40 else None

    def _answer(self, req: http.server.BaseHTTPRequestHandler, body: bool) -> None:
        path = urllib.parse.urlsplit(req.path).path
        api = f"/api/models/{self.repo_id}/"
        resolve = f"/{self.repo_id}/resolve/"
        if path.startswith(api + "revision/"):
            commit = self.commit(path[len(api + "revision/"):])
            if commit is None:
                return self._send(req, 404, {"error": "Revision Not Found"}, body,
                                  {"X-Error-Code": "RevisionNotFound"})
            return self._send(req, 200, {
                "id": self.repo_id, "modelId": self.repo_id, "sha": commit, "private": False,
                "siblings": [{"rfilename": name} for name in self.files]}, body)
        if path.startswith(api + "tree/"):
            commit = self.commit(path[len(api + "tree/"):].split("/")[0])
            if commit is None:
                return self._send(req, 404, {"error": "Revision Not Found"}, body)
            return self._send(req, 200, [
                {"type": "file", "path": name, "size": file.stat().st_size,
                 "oid": self.etag(name)[:40]} for name, file in self.files.items()], body)
        if path.startswith(resolve):
            rev, _, name = path[len(resolve):].partition("/")
            commit, name = self.commit(rev), urllib.parse.unquote(name)
            if commit is None or name not in self.files:
                return self._send(req, 404, {"error": "Entry not found"}, body,
                                  {"X-Error-Code": "EntryNotFound"})
            file = self.files[name]
            req.send_response(200)
            req.send_header("X-Repo-Commit", commit)
            req.send_header("ETag", f'"{self.etag(name)}"')
            req.send_header("Content-Length", str(file.stat().st_size))
            req.send_header("Content-Type", "application/octet-stream")
            req.end_headers()
            if body:
                with open(file, "rb") as f:
                    while block := f.read(1 << 20):
                        req.wfile.write(block)
            return None
        return self._send(req, 404, {"error": f"not faked: {path}"}, body,
                          {"X-Error-Code": "RepoNotFound"})

    @staticmethod
    def _send(req, status: int, payload, body: bool, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        req.send_response(status)
        for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
            req.send_header(key, value)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)


def make_cache(cache_dir: Path, repo_id: str, model_dir: Path, commits=COMMITS,
               branch: str = "main") -> list[Path]:
    """Fill ``cache_dir`` (a hub cache: ``.../huggingface-cache/hub``) with ``model_dir`` as
    ``repo_id`` at each commit, oldest first, with huggingface_hub's snapshot_download
    (one call per commit; ``branch``'s ref ends at the last). Returns the snapshot folders.

    Each download runs in a subprocess: huggingface_hub reads HF_HUB_OFFLINE, which the
    test session may set, when it is imported."""
    hub = FakeHub(repo_id, model_dir, branch)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"))}
    env.update(HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="30")
    folders = []
    try:
        for commit in commits:
            hub.head = commit
            args = {"repo_id": repo_id, "revision": branch, "cache_dir": str(cache_dir),
                    "endpoint": hub.url}
            result = subprocess.run([sys.executable, "-c", _DOWNLOAD, json.dumps(args)],
                                    env=env, capture_output=True, text=True, timeout=600)
            if result.returncode != 0:
                raise RuntimeError(f"snapshot_download of {repo_id}@{commit} failed:\n"
                                   f"{result.stderr[-4000:]}")
            folders.append(Path(result.stdout.strip().splitlines()[-1]))
    finally:
        hub.close()
    return folders


def assert_serves(endpoint, repo_id: str) -> None:
    """A job completes on ``endpoint``'s worker (an EndpointProcess), and its OpenAI route
    lists the model as ``repo_id``: what a cached model's worker must do."""
    import requests

    state = endpoint.wait_final(endpoint.run({"prompt": "The capital of France is",
                                              "sampling_params": {"max_tokens": 8}}), timeout=300)
    assert state["status"] == "COMPLETED" and state["output"], state
    listed = requests.get(f"{endpoint.url}/openai/v1/models", headers=endpoint.headers,
                          timeout=300).json()
    assert [m["id"] for m in listed["data"]] == [repo_id], listed
