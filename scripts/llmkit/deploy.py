"""`make deploy`: the kit's image as a Runpod serverless endpoint, through the runpod SDK.

It creates what docs/DEPLOY.md creates by hand: a serverless template (the image and its
env: MODE_TO_RUN, CONCURRENCY_MODIFIER, MODEL for a cached model, RUNPOD_INIT_TIMEOUT),
then a queue endpoint from it, scaled by requests. ``--dry-run`` prints both calls and the
runpodctl commands that do the same, with no API key and nothing sent. What the SDK cannot
set (a load-balancing endpoint's type, the endpoint's cached model, its execution timeout)
is printed as the step that does it. The key is read from RUNPOD_API_KEY, never printed.

    python -m llmkit.deploy --image docker.io/you/runpod-llm-kit:cached \\
        --model Qwen/Qwen2.5-0.5B-Instruct --concurrency 8 --workers-max 3 [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys

KEY_VAR = "RUNPOD_API_KEY"
LB_PORT = 8000
SECRETS = {KEY_VAR, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"}
# The SDK writes names and env values into its GraphQL text as they are: keep quotes,
# backslashes and line breaks out, or the query breaks (or says something else).
UNSAFE = re.compile(r'["\\\n\r]')


class DeployError(ValueError):
    """A setting that cannot be deployed; the message names it."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="make deploy", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", required=True, help="the image in a registry Runpod can pull")
    p.add_argument("--name", help="template and endpoint name (default: llmkit-<tag>)")
    p.add_argument("--mode", choices=["serverless", "lb"], default="serverless",
                   help="serverless: a queue endpoint; lb: a load-balancing worker's template")
    p.add_argument("--model", default="", help="org/name: the endpoint's cached model "
                   "(for an image built without one, make image MODEL=)")
    p.add_argument("--gpu", default="ADA_24", help="GPU pool id (ADA_24, AMPERE_16, ...)")
    p.add_argument("--workers-min", type=int, default=0)
    p.add_argument("--workers-max", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=4,
                   help="CONCURRENCY_MODIFIER, and requests per worker before scaling out")
    p.add_argument("--disk", type=int, default=30, help="container disk in GB: the image + 5-10")
    p.add_argument("--init-timeout", type=int, help="RUNPOD_INIT_TIMEOUT, seconds a worker "
                   "may take to start (Runpod's default: 7 minutes)")
    p.add_argument("--no-flash-boot", action="store_true", help="FlashBoot is on by default")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="more template env (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print what would be created")
    return p.parse_args(argv)


def plan(args) -> tuple[dict, dict | None]:
    """(create_template's arguments, create_endpoint's without template_id, or None for lb)."""
    tag = args.image.rsplit("/", 1)[-1].partition(":")[2] or "latest"
    name = args.name or f"llmkit-{tag}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise DeployError(f"--name {name!r}: use letters, digits, '.', '_' and '-' (64 at most)")
    if tag.endswith("-cpu"):
        raise DeployError(f"--image {args.image}: a -cpu image; the SDK creates GPU endpoints "
                          "only. Deploy the GPU image, or see docs/DEPLOY.md (--compute-type CPU)")
    if tag.startswith("cached") and not args.model:
        raise DeployError(f"--image {args.image} has no model baked in: give --model org/name, "
                          "the model Runpod caches for the endpoint")
    if args.model and not re.fullmatch(r"[\w.-]+/[\w.-]+", args.model):
        raise DeployError(f"--model {args.model!r}: expected a Hugging Face repo id, org/name")
    if not 1 <= args.concurrency <= 1024:
        raise DeployError(f"--concurrency {args.concurrency}: expected 1 to 1024")
    if not 0 <= args.workers_min <= args.workers_max or args.workers_max < 1:
        raise DeployError(f"--workers-min {args.workers_min} --workers-max {args.workers_max}: "
                          "expected 0 <= min <= max and max >= 1")
    env = {"MODE_TO_RUN": args.mode, "CONCURRENCY_MODIFIER": str(args.concurrency)}
    if args.mode == "lb":
        env["PORT"] = str(LB_PORT)
    if args.model:
        env["MODEL"] = args.model
    if args.init_timeout is not None:
        env["RUNPOD_INIT_TIMEOUT"] = str(args.init_timeout)
    for item in args.env:
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise DeployError(f"--env {item!r}: expected KEY=VALUE")
        if key in SECRETS and not re.fullmatch(r"\{\{\s*RUNPOD_SECRET_\w+\s*\}\}", value):
            raise DeployError(f"--env {key}: a template's env is plain text in the console; "
                              f"store it as a Runpod secret and pass {key}="
                              "'{{ RUNPOD_SECRET_name }}'")
        env[key] = value
    for key, value in [("--image", args.image), *env.items()]:
        if UNSAFE.search(value):
            raise DeployError(f"{key}={value!r}: quotes, backslashes and line breaks cannot "
                              "go through the SDK's query")
    template = {"name": name, "image_name": args.image, "is_serverless": True,
                "container_disk_in_gb": args.disk, "env": env}
    if args.mode == "lb":
        template["ports"] = f"{LB_PORT}/http"
        return template, None
    endpoint = {"name": name, "gpu_ids": args.gpu, "workers_min": args.workers_min,
                "workers_max": args.workers_max, "scaler_type": "REQUEST_COUNT",
                "scaler_value": args.concurrency, "flashboot": not args.no_flash_boot}
    return template, endpoint


def runpodctl(template: dict, endpoint: dict | None) -> list[str]:
    """The same as runpodctl v2.7.2 commands (docs/DEPLOY.md)."""
    make = ["runpodctl", "template", "create", "--serverless", "--name", template["name"],
            "--image", template["image_name"], "--container-disk-in-gb",
            str(template["container_disk_in_gb"]), "--env", json.dumps(template["env"])]
    if "ports" in template:
        make += ["--ports", template["ports"]]
    commands = [shlex.join(make)]
    if endpoint:
        serve = ["runpodctl", "serverless", "create", "--name", endpoint["name"],
                 "--template-id", "<template-id>", "--gpu-id", endpoint["gpu_ids"],
                 "--workers-min", str(endpoint["workers_min"]),
                 "--workers-max", str(endpoint["workers_max"]), "--scale-by", "requests",
                 "--scale-threshold", str(endpoint["scaler_value"]),
                 f"--flash-boot={str(endpoint['flashboot']).lower()}"]
        model = template["env"].get("MODEL")
        if model:
            serve += ["--model-reference", f"https://huggingface.co/{model}:main"]
        commands.append(shlex.join(serve))
    return commands


def next_steps(template: dict, endpoint_id: str | None, template_id: str) -> list[str]:
    """What the SDK could not do, as the command or console step that does it."""
    if endpoint_id is None:
        return [f"create the endpoint in the console: Serverless > New Endpoint > Load "
                f"Balancer, template {template_id} (the SDK cannot set the endpoint type); "
                f"it then answers on https://<endpoint-id>.api.runpod.ai/v1 and /runsync"]
    steps = []
    model = template["env"].get("MODEL")
    if model:
        steps.append(f"attach the cached model (the SDK cannot): runpodctl serverless update "
                     f"{endpoint_id} --model-reference https://huggingface.co/{model}:main, "
                     f"or the endpoint's Model field in the console")
    steps.append("execution timeout: Runpod's default, 600 s; change it in the console")
    return steps


def deploy(template: dict, endpoint: dict | None, api_key: str) -> int:
    import requests
    import runpod
    from runpod import error

    runpod.api_key = api_key
    try:
        made = runpod.create_template(**template)
    except (error.QueryError, error.AuthenticationError, requests.RequestException) as err:
        print(f"error: Runpod refused the template {template['name']!r}: {err}", file=sys.stderr)
        return 1
    print(f"template {made['id']}: {template['name']} ({template['image_name']})")
    endpoint_id = None
    if endpoint:
        try:
            endpoint_id = runpod.create_endpoint(template_id=made["id"], **endpoint)["id"]
        except (error.QueryError, error.AuthenticationError, requests.RequestException) as err:
            print(f"error: Runpod refused the endpoint {endpoint['name']!r}: {err}. The "
                  f"template {made['id']} was created: delete it or reuse it (runpodctl "
                  f"serverless create --template-id {made['id']})", file=sys.stderr)
            return 1
        print(f"endpoint {endpoint_id}: https://api.runpod.ai/v2/{endpoint_id}/runsync "
              f"(OpenAI: https://api.runpod.ai/v2/{endpoint_id}/openai/v1)")
    for step in next_steps(template, endpoint_id, made["id"]):
        print(f"next: {step}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        template, endpoint = plan(args)
    except DeployError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("dry run: nothing is sent. The runpod SDK would be called with:")
        print(f"  runpod.create_template(**{json.dumps(template)})")
        if endpoint:
            print(f"  runpod.create_endpoint(template_id=<its id>, **{json.dumps(endpoint)})")
        print("The same with runpodctl:")
        for command in runpodctl(template, endpoint):
            print(f"  {command}")
        for step in next_steps(template, "<endpoint-id>" if endpoint else None, "<template-id>"):
            print(f"then: {step}")
        return 0
    api_key = os.environ.get(KEY_VAR, "").strip()
    if not api_key:
        print(f"error: {KEY_VAR} is not set. Make a key at "
              "https://console.runpod.io/user/settings and export it, or add --dry-run "
              "(make deploy DEPLOY_ARGS=--dry-run) to see what would be created",
              file=sys.stderr)
        return 2
    return deploy(template, endpoint, api_key)


if __name__ == "__main__":
    sys.exit(main())
