"""`make deploy` (llmkit.deploy): the real runpod SDK sends its GraphQL over real HTTP to a
local stand-in for api.runpod.io (RUNPOD_API_BASE_URL, which the SDK reads), which records
each query and answers as Runpod's API does. No account is reached from here: the stand-in
shows what the SDK sends, not what Runpod accepts (docs/DEPLOY.md says what was read where)."""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import sys
import threading

import pytest

from llmkit.paths import REPO_ROOT

KEY = "rpa_TESTKEY0123456789"


class FakeRunpodAPI:
    """POST /graphql: saveTemplate -> {"id": "tpl-1"}, saveEndpoint -> {"id": "ep-1"}, or
    a GraphQL error for the mutation named in ``refuse``."""

    def __init__(self):
        self.queries, self.auth, self.refuse = [], [], None
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["query"]
                api.queries.append(query)
                api.auth.append(self.headers.get("Authorization"))
                mutation = re.search(r"(saveTemplate|saveEndpoint)", query).group(1)
                if mutation == api.refuse:
                    body = {"errors": [{"message": f"{mutation}: name must be unique"}]}
                else:
                    made = {"saveTemplate": "tpl-1", "saveEndpoint": "ep-1"}[mutation]
                    body = {"data": {mutation: {"id": made}}}
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def api():
    fake = FakeRunpodAPI()
    yield fake
    fake.server.shutdown()


def deploy(api, *args, key=KEY):
    env = {**os.environ, "RUNPOD_API_BASE_URL": api.url}
    env.pop("RUNPOD_API_KEY", None)
    if key:
        env["RUNPOD_API_KEY"] = key
    result = subprocess.run([sys.executable, "-m", "llmkit.deploy", *args], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    assert KEY not in result.stdout + result.stderr  # the key is never printed
    return result


def test_a_cached_model_endpoint_through_the_sdk(api):
    result = deploy(api, "--image", "docker.io/you/runpod-llm-kit:cached", "--model",
                    "Qwen/Qwen2.5-0.5B-Instruct", "--concurrency", "8", "--workers-max", "2",
                    "--init-timeout", "900")
    assert result.returncode == 0, result.stderr
    template, endpoint = api.queries
    assert api.auth == [f"Bearer {KEY}"] * 2
    assert 'imageName: "docker.io/you/runpod-llm-kit:cached"' in template
    assert "isServerless: true" in template and "containerDiskInGb: 30" in template
    for key, value in [("MODE_TO_RUN", "serverless"), ("CONCURRENCY_MODIFIER", "8"),
                       ("MODEL", "Qwen/Qwen2.5-0.5B-Instruct"), ("RUNPOD_INIT_TIMEOUT", "900")]:
        assert f'{{ key: "{key}", value: "{value}" }}' in template, key
    assert 'templateId: "tpl-1"' in endpoint  # the template the first call made
    for field in ["flashBootType: FLASHBOOT", 'gpuIds: "ADA_24"', 'scalerType: "REQUEST_COUNT"',
                  "scalerValue: 8", "workersMin: 0", "workersMax: 2",
                  'name: "llmkit-cached"']:
        assert field in endpoint, field
    assert "endpoint ep-1: https://api.runpod.ai/v2/ep-1/runsync" in result.stdout
    assert ("runpodctl serverless update ep-1 --model-reference "
            "https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct:main") in result.stdout


def test_dry_run_sends_nothing_and_needs_no_key(api):
    result = deploy(api, "--image", "you/runpod-llm-kit:SmolLM2-135M-Instruct",
                    "--no-flash-boot", "--dry-run", key=None)
    assert result.returncode == 0, result.stderr
    assert api.queries == []
    assert '"image_name": "you/runpod-llm-kit:SmolLM2-135M-Instruct"' in result.stdout
    assert '"flashboot": false' in result.stdout
    assert ("runpodctl template create --serverless --name llmkit-SmolLM2-135M-Instruct "
            "--image you/runpod-llm-kit:SmolLM2-135M-Instruct") in result.stdout
    assert "--scale-by requests --scale-threshold 4 --flash-boot=false" in result.stdout


def test_no_key_refuses_clearly_and_sends_nothing(api):
    result = deploy(api, "--image", "you/kit:SmolLM2-135M-Instruct", key=None)
    assert result.returncode == 2
    assert "RUNPOD_API_KEY is not set" in result.stderr and "--dry-run" in result.stderr
    assert api.queries == []


@pytest.mark.parametrize("args, named", [
    (["--image", "you/kit:cached"], "--model org/name"),
    (["--image", "you/kit:SmolLM2-135M-Instruct-cpu"], "a -cpu image"),
    (["--image", "you/kit:x", "--model", "not a repo"], "--model 'not a repo'"),
    (["--image", "you/kit:x", "--env", 'SYSTEM_PROMPT=say "hi"'], "SYSTEM_PROMPT="),
    (["--image", "you/kit:x", "--env", "HF_TOKEN=hf_secret"], "RUNPOD_SECRET"),
    (["--image", "you/kit:x", "--env", "oops"], "--env 'oops'"),
    (["--image", "you/kit:x", "--workers-min", "4", "--workers-max", "2"], "--workers-min 4"),
    (["--image", "you/kit:x", "--concurrency", "0"], "--concurrency 0"),
])
def test_bad_settings_are_named_before_anything_is_sent(api, args, named):
    result = deploy(api, *args)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    assert api.queries == []


def test_a_refused_endpoint_names_the_template_it_left(api):
    api.refuse = "saveEndpoint"
    result = deploy(api, "--image", "you/kit:SmolLM2-135M-Instruct")
    assert result.returncode == 1
    assert "Runpod refused the endpoint 'llmkit-SmolLM2-135M-Instruct'" in result.stderr
    assert "name must be unique" in result.stderr and "template tpl-1" in result.stderr


def test_load_balancing_makes_the_template_and_says_how_to_make_the_endpoint(api):
    result = deploy(api, "--image", "you/kit:SmolLM2-135M-Instruct", "--mode", "lb")
    assert result.returncode == 0, result.stderr
    (template,) = api.queries  # the SDK cannot make a load-balancing endpoint
    assert 'ports: "8000/http"' in template
    assert '{ key: "MODE_TO_RUN", value: "lb" }' in template
    assert '{ key: "PORT", value: "8000" }' in template
    assert "Load Balancer, template tpl-1" in result.stdout


def test_make_deploy_dry_run():
    result = subprocess.run(["make", "-s", "deploy", "IMAGE=you/kit", "TAG=v1",
                             "DEPLOY_ARGS=--dry-run"], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"image_name": "you/kit:v1"' in result.stdout
