"""The pure core: states and reasons, the job and step models, events, the job
machine and the scheduling machine. No asyncio, zmq, sqlite or os here; the
core imports only the core (tests/test_import_rules.py)."""
