"""The parts of ``loadtests/locustfile.py``: request payloads, answer checks, load shapes,
the pass/fail gate, and the result files each run leaves behind."""
