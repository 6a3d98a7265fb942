"""Offline: the network guard of conftest works, and `ragqa ingest` + `ragqa ask` run under it.

The guard (tests/netguard) is on for the whole suite, in the pytest process and in every Python subprocess:
any test that tries to reach another host fails, even when the error is caught inside a library.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import run_cli
from ragqa_netguard import NetworkBlockedError

REMOTE = ("10.255.255.1", 443)  # a non-loopback address; the guard must refuse before any packet leaves


def test_guard_blocks_other_hosts_and_allows_loopback(monkeypatch, tmp_path):
    monkeypatch.delenv("RAGQA_NETGUARD_LOG")  # these attempts are on purpose: do not fail this test for them
    with pytest.raises(NetworkBlockedError, match="network access blocked"):
        socket.create_connection(REMOTE, timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, pytest.raises(NetworkBlockedError):
        s.connect_ex(REMOTE)
    with pytest.raises(NetworkBlockedError, match="resolve 'huggingface.co'"):
        socket.getaddrinfo("huggingface.co", 443)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(NetworkBlockedError):
        s.sendto(b"x", ("8.8.8.8", 53))
    with socket.create_server(("127.0.0.1", 0)) as server:  # loopback stays usable (local test servers)
        socket.create_connection(server.getsockname(), timeout=5).close()
        socket.create_connection(("localhost", server.getsockname()[1]), timeout=5).close()

    # A subprocess gets the guard too (sitecustomize on PYTHONPATH), and logs the attempt even if it is caught.
    log = tmp_path / "blocked.log"
    code = f"import socket\ntry:\n    socket.create_connection({REMOTE!r}, timeout=1)\nexcept OSError as e:\n" \
           "    print(type(e).__name__)\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "RAGQA_NETGUARD_LOG": str(log)})
    assert res.stdout.strip() == "NetworkBlockedError", res.stderr
    assert "connect to ('10.255.255.1', 443)" in log.read_text()


@pytest.mark.slow
def test_ingest_and_ask_run_offline(tmp_path):
    """The autouse guard fails this test if either command (or a library under it) tries the network."""
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "scabies", "title": "Scabies", "text": "Scabies is an itchy rash caused by tiny mites that burrow "
         "into the skin. Permethrin cream treats it, and close contacts are treated at the same time."},
        {"id": "warts", "title": "Warts", "text": "Warts are rough bumps caused by the human papillomavirus. "
         "Salicylic acid or freezing with liquid nitrogen removes them."},
    ]))
    # Offline must not depend on the HF_HUB_OFFLINE the suite sets: a user's shell may not have it.
    env = {"HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    idx = tmp_path / "idx"
    res = run_cli("ingest", "--index", str(idx), "--corpus", str(corpus), "--device", "cpu", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli("ask", "How is scabies treated?", "--index", str(idx), "--json", "--max-new-tokens", "8",
                  "--set", "model.device=cpu", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout.strip().splitlines()[-1])
    assert data["passages"] and data["passages"][0]["doc_id"] == "scabies"
