"""A local Runpod serverless endpoint: the platform's API in front of real workers.

The exported handler.py runs unmodified in the runpod SDK's production worker loop,
which polls this server for jobs exactly as it polls the platform. Clients, the
kit's own and ``runpod.Endpoint``, talk to ``http://HOST:PORT/v2``.

    python -m llmkit.endpoint --model SmolLM2-135M-Instruct      # see --help

Modules: ``jobs`` (job store and states), ``registry`` (workers as the server sees
them), ``config`` (settings and app state), ``auth`` (keys), ``httputil`` (JSON
errors, body limits, long-polls), ``public_api`` and ``worker_api`` (the two HTTP
sides), ``openai_api`` (the OpenAI-compatible route, ``/v2/{id}/openai/v1``, on top of
the job queue), ``server`` (the app), ``workers`` (the worker process supervisor),
``__main__`` (the command line), ``harness`` (run it as a subprocess and talk to it).
"""

from llmkit.endpoint.auth import worker_key
from llmkit.endpoint.config import DEV_API_KEY, EndpointConfig
from llmkit.endpoint.server import LocalEndpoint, build_app
from llmkit.endpoint.worker_api import worker_env

__all__ = ["DEV_API_KEY", "EndpointConfig", "LocalEndpoint", "build_app", "worker_env",
           "worker_key"]
