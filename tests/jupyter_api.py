"""Jupyter Server's REST and kernel APIs, called as JupyterLab calls them: tests edit a
notebook (contents API) and run code in the notebook's own kernel (sessions API, then the
kernel's websocket), as a user's browser would."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import PurePosixPath

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

KERNEL = "runpod-llm-kit"


class Jupyter:
    def __init__(self, base: str, token: str) -> None:
        self.base, self.token = base.rstrip("/"), token
        self.headers = {"Authorization": f"token {token}"}

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        response = requests.request(method, f"{self.base}/api/{path}", headers=self.headers,
                                    timeout=60, **kwargs)
        assert response.ok, f"{method} /api/{path}: {response.status_code} {response.text}"
        return response

    def notebook(self, path: str) -> dict:
        return self._call("GET", f"contents/{path}").json()["content"]

    def save_notebook(self, path: str, content: dict) -> None:
        """What Ctrl+S in JupyterLab sends."""
        self._call("PUT", f"contents/{path}",
                   json={"type": "notebook", "format": "json", "content": content})

    def run(self, notebook: str, code: str, timeout: float = 300) -> str:
        """``code`` in a fresh kernel of ``notebook`` (a path under Jupyter's root), started
        as JupyterLab starts it; returns what it printed, raises on an error."""
        session = self._call("POST", "sessions", json={
            "path": notebook, "name": PurePosixPath(notebook).name, "type": "notebook",
            "kernel": {"name": KERNEL}}).json()
        try:
            return asyncio.run(self._execute(session["kernel"]["id"], code, timeout))
        finally:
            self._call("DELETE", f"sessions/{session['id']}")

    async def _execute(self, kernel_id: str, code: str, timeout: float) -> str:
        url = self.base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        socket = await websocket_connect(HTTPRequest(url, headers=self.headers))
        msg_id = uuid.uuid4().hex
        socket.write_message(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "test",
                       "session": uuid.uuid4().hex, "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
        printed = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    raw = await socket.read_message()
                    assert raw is not None, "the kernel's websocket closed"
                    message = json.loads(raw)
                    if message.get("parent_header", {}).get("msg_id") != msg_id:
                        continue
                    kind, content = message["msg_type"], message["content"]
                    if kind == "stream":
                        printed.append(content["text"])
                    elif kind == "error":
                        raise AssertionError(f"{content['ename']}: {content['evalue']}\n"
                                             + "".join(printed))
                    elif kind == "status" and content["execution_state"] == "idle":
                        return "".join(printed)
        finally:
            socket.close()
