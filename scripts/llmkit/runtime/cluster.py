"""One model across the nodes of a Runpod Instant Cluster (``CLUSTER``).

Runpod sets these on every node: NUM_NODES, NODE_RANK (0 on the primary node),
PRIMARY_ADDR and PRIMARY_PORT (also as MASTER_ADDR/MASTER_PORT), NODE_ADDR (this node on
the cluster's network) and NUM_TRAINERS (GPUs per node). Node 0 serves, as MODE_TO_RUN
says; its engine spans every node, tensor parallel across a node's GPUs and pipeline
parallel across the nodes, as vLLM's docs advise (either can still be set by hand).
The other nodes only run their share of the model:

* ``CLUSTER=ray``: Runpod's documented way. start.sh starts Ray's head on node 0 and waits
  for the others to join it; the engine runs its ranks through Ray. vLLM's CPU build has
  no Ray executor, so this is for GPUs.
* ``CLUSTER=vllm``: vLLM's own multi-node processes, no Ray. Node 0's engine meets the
  others over torch.distributed at PRIMARY_ADDR; each other node runs
  ``python -m llmkit.runtime.cluster``, vLLM's headless mode, until node 0 goes.

``python -m llmkit.runtime.cluster --shell`` prints the checked node for start.sh;
``--wait-ray`` waits until every node has joined Ray.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import socket
import sys
import time

from llmkit.runtime.errors import SettingsError

# What Runpod sets on each node of an Instant Cluster (the platform's, not the kit's).
RUNPOD_VARIABLES = ("NUM_NODES", "NODE_RANK", "PRIMARY_ADDR", "MASTER_ADDR", "PRIMARY_PORT",
                    "MASTER_PORT", "NODE_ADDR", "NUM_TRAINERS")
# torch.distributed's meeting port on node 0 when Runpod names none (vLLM's default).
DEFAULT_PORT = 29501


@dataclasses.dataclass(frozen=True)
class Node:
    nodes: int
    rank: int
    primary: str  # node 0's address on the cluster's network
    port: int
    address: str  # this node's
    gpus: int | None  # per node, where Runpod says

    @property
    def head(self) -> bool:
        return self.rank == 0


def node(environ=os.environ) -> Node:
    """This node, from Runpod's variables; a SettingsError names a missing or bad one."""
    nodes = _int(environ, "NUM_NODES", 1, low=1)
    rank = _int(environ, "NODE_RANK", 0, low=0)
    if rank >= nodes:
        raise SettingsError(f"NODE_RANK={rank} is not valid: expected 0 to {nodes - 1} "
                            f"(NUM_NODES={nodes})")
    primary = (environ.get("PRIMARY_ADDR") or environ.get("MASTER_ADDR") or "").strip()
    if nodes > 1 and not primary:
        raise SettingsError("PRIMARY_ADDR is not set: a cluster's nodes meet at node 0's "
                            "address (Runpod sets it on every node of an Instant Cluster)")
    port = _int(environ, "PRIMARY_PORT", None, low=1) or _int(environ, "MASTER_PORT", None,
                                                              low=1)
    gpus = _int(environ, "NUM_TRAINERS", None, low=1)
    address = (environ.get("NODE_ADDR") or "").strip() or _own_address()
    return Node(nodes, rank, primary or "127.0.0.1", port or DEFAULT_PORT, address, gpus)


def interface(address: str) -> str:
    """The network interface that holds ``address`` ("" if none): NCCL and Gloo are told
    to talk over the cluster's own network, not the management one."""
    import psutil

    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == address for a in addresses):
            return name
    return ""


def _own_address() -> str:
    """This machine's address where NODE_ADDR is not set (outside an Instant Cluster)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def engine_defaults(environ, cluster: str, on_cpu: bool) -> dict:
    """vLLM's settings for this node's engine under ``cluster`` (the kit's CLUSTER), as
    defaults: a variable set by hand (PIPELINE_PARALLEL_SIZE=...) wins."""
    if cluster == "off":
        return {}
    here = node(environ)
    defaults = {"pipeline_parallel_size": here.nodes}
    if here.gpus and not on_cpu:
        defaults["tensor_parallel_size"] = here.gpus
    if cluster == "ray":
        return {**defaults, "distributed_executor_backend": "ray"}
    return {**defaults, "distributed_executor_backend": "mp", "nnodes": here.nodes,
            "node_rank": here.rank, "master_addr": here.primary, "master_port": here.port}


def serve_share():
    """CLUSTER=vllm on a node other than 0: run this node's ranks (vLLM's headless mode)
    until node 0 stops; SIGTERM stops them."""
    from llmkit.runtime import config, logs
    from llmkit.runtime.vllm_api import run_headless

    settings = config.load()
    args = settings.serve_args
    here = node()
    logs.get("cluster").info(
        f"node {here.rank} of {here.nodes}: serving its share of {settings.describe()} "
        f"for node 0 at {here.primary}:{here.port}")
    config.cpu_environment(ranks=config.local_ranks(args))
    args.headless, args.api_server_count = True, args.api_server_count or 0
    run_headless(args)


def wait_for_ray(nodes: int, timeout: float, say=print) -> None:
    """Until ``nodes`` nodes are alive in the Ray cluster this node runs the head of."""
    import ray

    ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
    started, last = time.monotonic(), None
    try:
        while (alive := sum(n["Alive"] for n in ray.nodes())) < nodes:
            if alive != last:
                say(f"cluster: {alive} of {nodes} nodes in Ray; waiting for the others")
                last = alive
            if time.monotonic() - started > timeout:
                raise SettingsError(f"only {alive} of NUM_NODES={nodes} nodes joined Ray in "
                                    f"{timeout:.0f} s")
            time.sleep(2)
        say(f"cluster: all {nodes} nodes are in Ray")
    finally:
        ray.shutdown()


def _int(environ, name, default, low):
    raw = (environ.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < low:
        raise SettingsError(f"{name}={raw!r} is not valid: expected an integer >= {low}")
    return int(raw)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmkit.runtime.cluster",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--shell", action="store_true",
                        help="print this node (NUM_NODES, NODE_RANK, ...) for start.sh")
    parser.add_argument("--wait-ray", type=float, metavar="SECONDS",
                        help="on node 0: wait until every node has joined Ray")
    args = parser.parse_args(argv)
    try:
        here = node()
        if args.shell:
            for name, value in (("NUM_NODES", here.nodes), ("NODE_RANK", here.rank),
                                ("PRIMARY_ADDR", here.primary), ("NODE_ADDR", here.address),
                                ("NODE_IFNAME", interface(here.address))):
                print(f"{name}={shlex.quote(str(value))}")
        elif args.wait_ray is not None:
            wait_for_ray(here.nodes, args.wait_ray)
        else:
            serve_share()
    except SettingsError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
