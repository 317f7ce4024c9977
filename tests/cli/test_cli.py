"""The command line's own behaviour: --print-bpf, doctor, report subcommands on bad files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("capture", ["256", "4096"])
def test_print_bpf_shows_the_c_and_the_typed_flags_it_compiles_with(capture):
    p = cli("doctor", "--print-bpf", "--capture-bytes", capture)
    assert p.returncode == 0, p.stderr
    assert f"-DCAPTURE_BYTES={capture} " in p.stdout.splitlines()[0]
    assert "int obsc_en_read(" in p.stdout and "/* ---- http_event.h ---- */" in p.stdout


@pytest.mark.kernel
def test_doctor_says_this_host_is_ready():
    p = cli("doctor")
    assert p.returncode == 0, p.stdout
    assert "compile + attach" in p.stdout and p.stdout.rstrip().endswith("ready: a run with kernel truth can work")


@pytest.mark.parametrize("sub", ["show", "validate", "junit", "html"])
@pytest.mark.parametrize("content, fragment", [
    (None, "cannot read"),
    ("{not json", "is not JSON"),
], ids=["missing", "not-json"])
def test_report_subcommands_give_one_line_on_a_bad_file(tmp_path, sub, content, fragment):
    f = tmp_path / "r.json"
    if content is not None:
        f.write_text(content)
    p = cli("report", sub, str(f))
    assert p.returncode == 1
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("obsconform: error:") and fragment in lines[0], p.stderr


@pytest.mark.parametrize("sub", ["show", "junit", "html"])
@pytest.mark.parametrize("content", ["{}", "[]", '{"schema_version": "1.0"}'], ids=["object", "array", "partial"])
def test_report_subcommands_refuse_json_that_is_not_a_report(tmp_path, sub, content):
    f = tmp_path / "r.json"
    f.write_text(content)
    p = cli("report", sub, str(f))
    assert p.returncode == 1, p.stdout
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "is not a CNCF-compliance-report.json" in lines[0], p.stderr
    assert not (tmp_path / "r.html").exists()


def test_report_validate_names_a_missing_field(tmp_path):
    f = tmp_path / "r.json"
    f.write_text('{"schema_version": "1.0"}')
    p = cli("report", "validate", str(f))
    assert p.returncode == 1
    assert "report_id" in p.stderr


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--requests", "abc", "--url", "http://127.0.0.1:1", "--pid", "1"], "'abc' is not a valid integer"),
    (["run", "--pid", "1"], "Missing option '--url'"),
    (["no-such-command"], "No such command"),
    (["run", "--url", "http://127.0.0.1:1", "--pid", "1", "--capture-bytes", "9"], "--capture-bytes"),
], ids=["bad-int", "missing-url", "unknown-command", "out-of-range"])
def test_usage_errors_exit_1_in_one_line_never_2(argv, fragment):
    # Exit 2 means non-compliant to a CI gate: a typo must never read as that.
    p = cli(*argv)
    assert p.returncode == 1, p.stderr
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("obsconform: error:") and fragment in lines[0], p.stderr
