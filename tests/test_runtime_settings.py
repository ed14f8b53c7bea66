"""The runtime's settings (llmkit/runtime/config.py): every engine argument by its variable,
the kit's own, and a clear message for a bad one. Read from a dict, as from the environment."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def config():
    from llmkit.runtime import config
    return config


def test_any_engine_argument_is_set_by_its_upper_snake_name(config, tiny_model_dir):
    settings = config.load({
        "MODEL": str(tiny_model_dir), "MAX_LOGPROBS": "3", "BLOCK_SIZE": "32",
        "ENABLE_PREFIX_CACHING": "false", "SERVED_MODEL_NAME": "ignored", "MAX_MODEL_LEN": "2k",
        "OPENAI_SERVED_MODEL_NAME_OVERRIDE": "my-model", "TOOL_CALL_PARSER": "hermes",
        "DTYPE": "", "MAX_NUM_SEQS": "5",
        # Not engine settings: vLLM's HTTP server flags, names used by others, the kit's
        # own LOG_LEVEL.
        "PORT": "1", "HOST": "example", "LOG_LEVEL": "debug", "MASTER_PORT": "none"})
    keys = ["max_logprobs", "block_size", "enable_prefix_caching", "served_model_name",
            "max_model_len", "dtype", "max_num_seqs"]
    assert {k: settings.engine_args.get(k) for k in keys} == {
        "max_logprobs": 3, "block_size": 32, "enable_prefix_caching": False,
        "served_model_name": ["my-model"], "max_model_len": 2000,
        "dtype": "float32",  # empty means the default: the kit's on a CPU
        "max_num_seqs": 5}
    # An OpenAI-layer flag is read; PORT is not.
    assert (settings.serve_args.tool_call_parser, settings.serve_args.port) == ("hermes", 8000)
    assert settings.engine_args["model"] == str(tiny_model_dir)


def test_the_kits_own_settings_and_their_defaults(config, tiny_model_dir):
    default = config.load({"MODEL": str(tiny_model_dir)})
    kit = default.kit
    assert (kit.concurrency_modifier, kit.default_max_tokens, kit.stream_interval_ms,
            kit.stream_interval_max_ms) == (1, 512, 100, 500)
    set_ = config.load({"MODEL": str(tiny_model_dir), "CONCURRENCY_MODIFIER": "3",
                        "DEFAULT_MAX_TOKENS": "64", "STREAM_INTERVAL_MS": "0",
                        "STREAM_INTERVAL_MAX_MS": "0"})
    kit = set_.kit
    assert (kit.concurrency_modifier, kit.default_max_tokens, kit.stream_interval_ms,
            kit.stream_interval_max_ms) == (3, 64, 0, 0)


def test_the_served_model_name_defaults_to_the_model_id(config, tiny_model_dir):
    named = config.load({"MODEL": str(tiny_model_dir), "MODEL_ID": "org/name"})
    folder = config.load({"MODEL": str(tiny_model_dir) + "/"})
    assert named.serve_args.served_model_name == ["org/name"]
    assert folder.serve_args.served_model_name == [tiny_model_dir.name]


@pytest.mark.parametrize("preset", [None, "auto"])
def test_on_a_cpu_vllm_gets_every_core_unless_told_otherwise(config, preset):
    environ = {} if preset is None else {"VLLM_CPU_OMP_THREADS_BIND": preset}
    config.cpu_environment(environ)
    every_core = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    assert environ["VLLM_CPU_OMP_THREADS_BIND"] == (preset or every_core)
    assert environ["VLLM_CPU_KVCACHE_SPACE"] == "1"


def test_on_a_cpu_each_parallel_rank_gets_its_own_cores(config):
    """Tensor or pipeline parallel on the CPU build: one core list per rank, or vLLM stops
    ("Given number of CPU id list ['0,1'] doesn't match local world size 2")."""
    assert config.omp_threads_bind({1, 0}) == "0,1"
    assert config.omp_threads_bind({0, 1}, ranks=2) == "0|1"
    assert config.omp_threads_bind(range(8), ranks=2) == "0,1,2,3|4,5,6,7"
    assert config.omp_threads_bind(range(7), ranks=2) == "0,1,2|3,4,5,6"
    assert config.omp_threads_bind({0, 1}, ranks=4) == "auto"
    environ = {}
    config.cpu_environment(environ, ranks=2)
    assert environ["VLLM_CPU_OMP_THREADS_BIND"] == config.omp_threads_bind(
        os.sched_getaffinity(0), ranks=2)


@pytest.mark.parametrize("name, value, expected", [
    ("CONCURRENCY_MODIFIER", "zero", "CONCURRENCY_MODIFIER='zero' is not valid"),
    ("CONCURRENCY_MODIFIER", "0", "an integer from 1 to 1024"),
    ("ENFORCE_EAGER", "maybe", "ENFORCE_EAGER='maybe' is not valid: expected true or false"),
    ("LOG_LEVEL", "loud", "LOG_LEVEL='loud' is not valid: expected DEBUG, INFO, WARNING or ERROR"),
    # vLLM's own engine arguments, checked by vLLM's own parser (its configs check the
    # rest when the engine is made: tests/test_handler_file.py starts workers for those).
    ("MAX_MODEL_LEN", "4q", "MAX_MODEL_LEN='4q' is not valid: invalid"),
    ("DTYPE", "float99", "DTYPE='float99' is not valid: invalid choice: 'float99'"),
    ("MAX_NUM_SEQS", "many", "MAX_NUM_SEQS='many' is not valid: invalid int value: 'many'"),
    ("KV_CACHE_DTYPE", "int3", "KV_CACHE_DTYPE='int3' is not valid: invalid choice"),
    ("LORA_MODULES", "{not json", "LORA_MODULES='{not json' is not valid: Invalid JSON"),
    ("ENABLE_AUTO_TOOL_CHOICE", "yes", "ENABLE_AUTO_TOOL_CHOICE requires TOOL_CALL_PARSER"),
    ("STREAM_INTERVAL_MS", "-1", "STREAM_INTERVAL_MS='-1' is not valid: expected an integer"),
    ("STREAM_INTERVAL_MAX_MS", "50",  # below STREAM_INTERVAL_MS, 100 by default
     "STREAM_INTERVAL_MAX_MS='50' is not valid: expected an integer from STREAM_INTERVAL_MS "
     "(100) to 60000"),
])
def test_a_bad_setting_is_refused_by_its_variable(config, tiny_model_dir, name, value,
                                                  expected):
    with pytest.raises(config.SettingsError) as refused:
        config.load({"MODEL": str(tiny_model_dir), name: value})
    assert expected in str(refused.value)


def test_a_variable_that_names_no_flag_is_reported_with_the_nearest_then_ignored(
        config, tiny_model_dir, capfd):
    """A typo, or a flag a vLLM release removed: one line each at start, and the worker
    goes on with the rest; the machine's other variables are left alone."""
    settings = config.load({"MODEL": str(tiny_model_dir), "MAX_MODEL_LENGTH": "300",
                            "TENSOR_PARALEL_SIZE": "1", "SWAP_SPACE": "4",
                            "GUIDED_DECODING_BACKEND": "xgrammar", "MAX_NUM_SEQS": "4",
                            "HOME": "/root", "HOSTNAME": "box", "TERM": "xterm",
                            "PATH": "/usr/bin", "LANG": "C.UTF-8", "MAX_TOKENS": "3"})
    assert settings.engine_args["max_num_seqs"] == 4
    assert "max_model_len" not in settings.engine_args
    lines = [line for line in capfd.readouterr().err.splitlines() if "not a setting" in line]
    version = __import__("llmkit.runtime.vllm_api").runtime.vllm_api.version()
    assert lines == [f"WARN   | {line}" for line in [  # the kit's log format (logs.py)
        f"GUIDED_DECODING_BACKEND is not a setting of vLLM {version}, which removed the flag: "
        "set STRUCTURED_OUTPUTS_CONFIG='{\"backend\": ...}' instead. Ignored.",
        f"MAX_MODEL_LENGTH is not a setting of vLLM {version}; did you mean MAX_MODEL_LEN? "
        "Ignored.",
        f"SWAP_SPACE is not a setting of vLLM {version}, which removed the flag: vLLM no "
        "longer has it. Ignored.",
        f"TENSOR_PARALEL_SIZE is not a setting of vLLM {version}; did you mean "
        "TENSOR_PARALLEL_SIZE? Ignored."]]
