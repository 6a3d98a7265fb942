"""Imported by Python at start-up when this folder is on PYTHONPATH (conftest puts it there for the tests'
subprocesses): installs the test network guard (see ragqa_netguard.py)."""

import os

if os.environ.get("RAGQA_NETGUARD") == "1":
    import ragqa_netguard

    ragqa_netguard.install()
