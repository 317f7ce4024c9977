"""The evidence reader: chunked decoding reads back exactly what the writer wrote, names the
bad line of a malformed file whatever the chunk size, and shares repeated values."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from agent import jsonl
from agent.evidence import (
    DriverRecord, EvidenceError, EvidenceWriter, KernelRequest, LogRecord, RunMeta, Span,
    gc_paused, load_evidence,
)

# One line per chunk, a few lines per chunk, everything in one chunk.
CHUNK_SIZES = [pytest.param(1, id="line-chunks"), pytest.param(600, id="small-chunks"),
               pytest.param(jsonl.CHUNK_BYTES, id="default-chunks")]


def _kernel(i: int) -> KernelRequest:
    return KernelRequest(f"k{i}", "7:3:0", i, "server", 7, 8, 3, "GET", f"/items/{i % 3}", "1.1",
                         {"host": ["h:1"], "traceparent": [f"00-{i:032x}-{i + 1:016x}-01"]},
                         True, 1000 + i, 200 if i % 5 else 503, 1100 + i, 1200 + i, 90, 120,
                         [100] if i == 4 else [], None, False)


def _span(i: int) -> Span:
    return Span(f"{i:032x}", f"{i + 9:016x}", f"{i + 1:016x}", "GET /items/{id}", "SERVER",
                1010 + i, 1190 + i, "UNSET", "", {"http.request.method": "GET", "n": i,
                                                  "tags": ["a", "b"]},
                {"service.name": "sut"}, "scope", "", [{"name": "e", "time_ns": 5}], 9)


def _write(run: Path, n: int = 40) -> tuple[list[KernelRequest], list[Span]]:
    kernel, spans = [_kernel(i) for i in range(n)], [_span(i) for i in range(n)]
    w = EvidenceWriter(run)
    w.meta(RunMeta(run_id="r", started_at="2027-01-01T00:00:00Z"))
    w.kernel(kernel)
    w.spans(spans)
    w.driver([DriverRecord(0, "load", "GET", "/", {"x": "1"}, "", "", 5, status=None)])
    w.logs([LogRecord("stdout", body={"nested": [1, "x"]}), LogRecord("otlp", body="plain")])
    w.close()
    return kernel, spans


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_reads_back_what_was_written(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", chunk)
    kernel, spans = _write(tmp_path)
    ev = load_evidence(tmp_path)
    assert ev.kernel == kernel and ev.spans == spans
    assert ev.driver[0].status is None and ev.driver[0].request_headers == {"x": "1"}
    assert [log.body for log in ev.logs] == [{"nested": [1, "x"]}, "plain"]


def test_repeated_values_are_one_string_and_unique_ones_are_not_pooled(tmp_path):
    _write(tmp_path)
    a, b = load_evidence(tmp_path).kernel[:2]
    assert a.method is b.method and a.headers["host"][0] is b.headers["host"][0]
    assert a.headers["traceparent"] != b.headers["traceparent"]


def _lines(run: Path, name: str) -> list[str]:
    return (run / name).read_text().splitlines(keepends=True)


# (what is done to kernel.jsonl, the line the error must name)
BROKEN = [
    pytest.param(lambda ls: ls[:-1] + [ls[-1][:25]], 40, id="truncated-last-line"),
    pytest.param(lambda ls: ls[:6] + [ls[6].rstrip() + "," + ls[7]] + ls[8:], 7,
                 id="two-objects-on-one-line"),
    pytest.param(lambda ls: ls[:3] + ["[1, 2]\n"] + ls[3:], 4, id="a-list-not-an-object"),
    pytest.param(lambda ls: ls[:9] + ['{"id": "k99"}\n'] + ls[9:], 10, id="required-field-missing"),
    pytest.param(lambda ls: ls[:2] + ["\n", "  \n"] + ls[2:11] + ["{oops\n"] + ls[11:], 14,
                 id="blank-lines-counted"),
]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("breaks,line", BROKEN)
def test_a_malformed_file_names_its_bad_line(tmp_path, monkeypatch, chunk, breaks, line):
    monkeypatch.setattr(jsonl, "CHUNK_BYTES", chunk)
    _write(tmp_path)
    (tmp_path / "kernel.jsonl").write_text("".join(breaks(_lines(tmp_path, "kernel.jsonl"))))
    with pytest.raises(EvidenceError, match=rf"kernel\.jsonl:{line}: not a valid KernelRequest record"):
        load_evidence(tmp_path)


def test_blank_lines_and_keys_of_a_newer_writer_are_skipped(tmp_path):
    kernel, _ = _write(tmp_path, 5)
    lines = _lines(tmp_path, "kernel.jsonl")
    newer = lines[0].rstrip()[:-1] + ',"added_later":{"x":1}}\n'
    (tmp_path / "kernel.jsonl").write_text("\n" + newer + "   \n" + "".join(lines[1:]) + "\n\n")
    assert load_evidence(tmp_path).kernel == kernel


@pytest.mark.parametrize("enabled", [True, False], ids=["gc-on", "gc-off"])
def test_gc_paused_restores_the_collector_state(enabled):
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        with gc_paused():
            assert not gc.isenabled()
        assert gc.isenabled() is enabled
        with pytest.raises(RuntimeError), gc_paused():
            raise RuntimeError("boom")
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()
