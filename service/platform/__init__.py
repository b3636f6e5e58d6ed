"""The bottom layer: settings, the CPU budget, the server's folder, error types and request ids.

Imports nothing else of the service; every other layer may import it.
"""
