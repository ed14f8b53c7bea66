"""CLUSTER: one model across the nodes of a Runpod Instant Cluster (runtime/cluster.py and
start.sh's join_cluster), without an engine. Two containers serving one model across
nodes: test_parallel.py."""

from __future__ import annotations

import os
import stat

import pytest
from test_start_sh import base_env, launch, run_start_sh

from llmkit.runtime import cluster, config
from llmkit.runtime.errors import SettingsError

RUNPOD = {"NUM_NODES": "2", "NODE_RANK": "1", "PRIMARY_ADDR": "10.65.0.2",
          "NODE_ADDR": "10.65.0.3", "NUM_TRAINERS": "8"}


def test_a_node_is_read_from_runpods_variables():
    here = cluster.node(RUNPOD)
    assert (here.nodes, here.rank, here.primary, here.address, here.gpus, here.head) == \
        (2, 1, "10.65.0.2", "10.65.0.3", 8, False)
    assert here.port == cluster.DEFAULT_PORT
    assert cluster.node({**RUNPOD, "PRIMARY_PORT": "7000"}).port == 7000
    assert cluster.node({**RUNPOD, "PRIMARY_ADDR": "", "MASTER_ADDR": "h"}).primary == "h"


@pytest.mark.parametrize("change, message", [
    ({"NODE_RANK": "2"}, "NODE_RANK=2 is not valid: expected 0 to 1 (NUM_NODES=2)"),
    ({"NUM_NODES": "0"}, "NUM_NODES='0' is not valid: expected an integer >= 1"),
    ({"NODE_RANK": "one"}, "NODE_RANK='one' is not valid"),
    ({"PRIMARY_ADDR": ""}, "PRIMARY_ADDR is not set"),
])
def test_a_bad_cluster_variable_is_named(change, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cluster.node({**RUNPOD, **change})


def engine(tiny_model_dir, **environ):
    return config.load({"MODEL": str(tiny_model_dir), **environ}).serve_args


def test_cluster_vllm_spans_the_nodes_with_vllms_own_processes(tiny_model_dir):
    args = engine(tiny_model_dir, CLUSTER="vllm", **RUNPOD)
    assert (args.pipeline_parallel_size, args.nnodes, args.node_rank, args.master_addr,
            args.distributed_executor_backend) == (2, 2, 1, "10.65.0.2", "mp")
    if config.ON_CPU:  # a GPU node's GPUs are its tensor-parallel ranks
        assert args.tensor_parallel_size == 1
    else:
        assert args.tensor_parallel_size == 8
    assert config.local_ranks(args) == args.tensor_parallel_size


def test_cluster_ray_runs_the_engine_on_ray_and_a_setting_by_hand_wins(tiny_model_dir):
    args = engine(tiny_model_dir, CLUSTER="ray", PIPELINE_PARALLEL_SIZE="1", **RUNPOD)
    assert args.distributed_executor_backend == "ray"
    assert args.pipeline_parallel_size == 1 and args.nnodes == 1


def test_no_cluster_reads_none_of_runpods_cluster_variables(tiny_model_dir):
    args = engine(tiny_model_dir, **RUNPOD)
    assert (args.pipeline_parallel_size, args.nnodes, args.distributed_executor_backend) == \
        (1, 1, None)


def fake_ray(tmp_path):
    """A `ray` on PATH that writes its arguments down."""
    folder = tmp_path / "bin"
    folder.mkdir()
    ray = folder / "ray"
    ray.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/ray-args\n')
    ray.chmod(ray.stat().st_mode | stat.S_IEXEC)
    return folder


def test_start_sh_joins_ray_on_a_node_other_than_0(tmp_path):
    env = base_env(tmp_path, CLUSTER="ray", MODE_TO_RUN="serverless", **RUNPOD)
    env["PATH"] = f"{fake_ray(tmp_path)}:{env['PATH']}"
    run = launch(tmp_path, env)
    assert run.proc.wait(30) == 0, run.log
    # exec'd: the node stays in Ray's cluster (--block) for as long as the pod runs
    assert (tmp_path / "ray-args").read_text().split() == [
        "start", "--address=10.65.0.2:6379", "--node-ip-address=10.65.0.3", "--block"]
    assert "cluster: node 1 of 2 (CLUSTER=ray), at 10.65.0.3; node 0 at 10.65.0.2" in run.log


def test_start_sh_without_ray_says_how_to_get_it(tmp_path):
    if any(os.access(os.path.join(p, "ray"), os.X_OK) for p in os.environ["PATH"].split(":")):
        pytest.skip("ray is installed here")
    done = run_start_sh(tmp_path, CLUSTER="ray", MODE_TO_RUN="serverless", **RUNPOD)
    assert done.returncode == 2
    assert "CLUSTER=ray needs Ray in the image: build it with WITH_RAY=1" in done.stderr


def test_start_sh_names_a_bad_cluster_variable_before_anything_starts(tmp_path):
    done = run_start_sh(tmp_path, CLUSTER="vllm", **{**RUNPOD, "NODE_RANK": "5"})
    assert done.returncode == 2
    assert "NODE_RANK=5 is not valid: expected 0 to 1 (NUM_NODES=2)" in done.stderr
    done = run_start_sh(tmp_path, CLUSTER="mpi")
    assert done.returncode == 2 and "CLUSTER='mpi' is not valid: expected off, ray or vllm" \
        in done.stderr
