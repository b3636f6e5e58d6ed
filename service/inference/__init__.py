"""Models and their batching: ONNX Runtime sessions, pipelines, the registry, metrics.

Knows nothing of HTTP: it imports only ``service.platform`` (and ``store_format``), never
Starlette or FastAPI. The API layer above turns requests into pipeline calls.
"""
