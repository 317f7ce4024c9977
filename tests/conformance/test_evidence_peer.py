"""KernelRequest's peer fields in the evidence: written and read back, and absent from
evidence written before they existed (read as unknown, never as an error)."""

from __future__ import annotations

import json

from agent.evidence import KERNEL_FILE, EvidenceWriter, KernelRequest, RunMeta, load_evidence


def _kernel(i: int, peer_addr: str, peer_port: int) -> KernelRequest:
    return KernelRequest(f"k{i}", "7:3:0", i, "server", 7, 8, 3, "GET", "/", "1.1", {"host": ["h"]},
                         True, 1000 + i, 200, 1100 + i, 1200 + i, peer_addr=peer_addr, peer_port=peer_port)


def _run(tmp_path, records: list[KernelRequest]):
    w = EvidenceWriter(tmp_path)
    w.meta(RunMeta(run_id="r", started_at="2027-01-01T00:00:00Z"))
    w.kernel(records)
    w.close()
    return tmp_path


def test_peer_fields_round_trip(tmp_path):
    written = [_kernel(0, "127.0.0.1", 51000), _kernel(1, "::1", 51001), _kernel(2, "", 0)]
    loaded = load_evidence(_run(tmp_path, written)).kernel
    assert [(r.peer_addr, r.peer_port) for r in loaded] == [("127.0.0.1", 51000), ("::1", 51001), ("", 0)]
    assert loaded == written


def test_a_repeated_peer_address_is_one_string_after_loading(tmp_path):
    # One client address for a whole run is the usual case: a million copies would cost ~60 MB.
    loaded = load_evidence(_run(tmp_path, [_kernel(i, "127.0.0.1", 53000 + i % 2) for i in range(4)])).kernel
    assert all(r.peer_addr is loaded[0].peer_addr for r in loaded)
    assert loaded[2].peer_port is loaded[0].peer_port


def test_evidence_without_peer_fields_loads_them_as_unknown(tmp_path):
    run = _run(tmp_path, [_kernel(i, "127.0.0.1", 52000 + i) for i in range(3)])
    path = run / KERNEL_FILE
    old = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        del record["peer_addr"], record["peer_port"]  # as an older agent wrote it
        old.append(json.dumps(record))
    path.write_text("\n".join(old) + "\n")
    loaded = load_evidence(run).kernel
    assert [(r.id, r.peer_addr, r.peer_port) for r in loaded] == [("k0", "", 0), ("k1", "", 0), ("k2", "", 0)]
