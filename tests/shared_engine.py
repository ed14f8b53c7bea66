"""The settings of the in-process engine that the runtime's test modules share
(conftest.plain_in_process)."""

# The in-process engine's settings. Engine and OpenAI-layer arguments no kit setting names
# are set by their UPPER_SNAKE names, as a user would set them.
IN_PROCESS_MAX_MODEL_LEN = 256
IN_PROCESS_NAME = "tiny-test"  # OPENAI_SERVED_MODEL_NAME_OVERRIDE
IN_PROCESS_MAX_LOGPROBS = 4
IN_PROCESS_SETTINGS = {
    "MAX_MODEL_LEN": str(IN_PROCESS_MAX_MODEL_LEN),
    "OPENAI_SERVED_MODEL_NAME_OVERRIDE": IN_PROCESS_NAME,
    "MAX_LOGPROBS": str(IN_PROCESS_MAX_LOGPROBS), "TOOL_CALL_PARSER": "pythonic",
    # The tiny random model would pad JSON with whitespace up to max_tokens.
    "STRUCTURED_OUTPUTS_CONFIG": '{"backend": "xgrammar", "disable_any_whitespace": true}'}
