"""The kit's tooling: model preparation, the notebook exporter, the local endpoint.

Nothing here is imported by the exported handler.py: that file needs only the
runpod SDK, vLLM and the standard library.
"""
