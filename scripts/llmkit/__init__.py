"""The kit: its runtime (llmkit.runtime, which the exported handler.py imports) and its
tooling (model preparation, the notebook exporter, the local endpoint).
"""
