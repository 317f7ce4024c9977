"""The README's "Tested stacks" table: versions read from what is installed, reasons
numbered once, the marked block rewritten in place, and the README's copy up to date."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.realworld import matrix_table as mt
from tests.realworld.matrix import MatrixRun, NotPass, Stack

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture
def npm_dir(tmp_path):
    (tmp_path / "node_modules" / "express").mkdir(parents=True)
    (tmp_path / "node_modules" / "express" / "package.json").write_text('{"version": "5.2.1"}')
    (tmp_path / "package.json").write_text(json.dumps({"dependencies": {"prom-client": "^15"}}))
    return tmp_path


@pytest.mark.parametrize("kind, name, expected", [
    ("pip", "pytest", __import__("pytest").__version__),
    ("pip", "no-such-distribution-xyz", "not installed"),
    ("npm", "express", "5.2.1"),
    ("npm", "prom-client", "^15 (wanted)"),
    ("npm", "left-pad", "not installed"),
], ids=["pip-installed", "pip-absent", "npm-installed", "npm-requested-range", "npm-absent"])
def test_package_version(npm_dir, kind, name, expected):
    assert mt.package_version(kind, name, npm_dir) == expected


@pytest.mark.parametrize("full, upstream", [
    ("1.22.1-9+deb12u12", "1.22.1"),
    ("1:9.2.1-2", "9.2.1"),
    ("2:1.0-rc1-3", "1.0-rc1"),
    ("1.21.22", "1.21.22"),
], ids=["revision", "epoch", "hyphen-in-upstream", "native"])
def test_upstream_version(full, upstream):
    assert mt.upstream_version(full) == upstream


def test_package_version_of_a_debian_package(npm_dir):
    # dpkg is on every Debian host: what dpkg-query reports, as its upstream part
    full = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "dpkg"], capture_output=True,
                          text=True, check=True).stdout
    got = mt.package_version("deb", "dpkg", npm_dir)
    assert got != "not installed" and full.split(":", 1)[-1].startswith(got)
    assert mt.package_version("deb", "no-such-package-xyz", npm_dir) == "not installed"


def test_package_version_rejects_an_unknown_kind(npm_dir):
    with pytest.raises(ValueError, match="'pip', 'npm' or 'deb'"):
        mt.package_version("cargo", "serde", npm_dir)


def _stack(runs) -> Stack:
    return Stack(name="toy", title="Toy | server", command="{py} -m toy", scenario=Path("s.json"),
                 tracing="ToyInstrumentor", exporter="none", packages=(("pip", "pytest"),),
                 runs=runs)


def test_shared_non_passes_are_shown_once_and_reasons_numbered_once(npm_dir):
    shared = NotPass(("BC-001",), "fail", "no bizCode")
    fault = NotPass(("KT-001",), "fail", "spans dropped", finding=False)
    table = mt.render_markdown([_stack((
        MatrixRun("clean", not_pass=(shared,)),
        MatrixRun("drop", not_pass=(shared, fault), load_dependent={"AL-002": "random"}),
    ))], npm_dir)
    row = next(line for line in table.splitlines() if line.startswith("| **Toy"))
    assert "Toy \\| server" in row  # a pipe in a title does not break the table
    assert f"pytest {pytest.__version__}" in row
    assert row.count("BC-001 fail [1]") == 1
    assert "**clean**: nothing more" in row
    assert "KT-001 fail [2]; AL-002 pass or fail [3]" in row
    assert table.splitlines()[-3:] == ["1. no bizCode", "2. (injected fault) spans dropped",
                                       "3. random"]


def test_markdown_into_rewrites_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\nbefore\n{mt.MARKER_START}\nold\n{mt.MARKER_END}\nafter\n")
    assert mt.main(["--markdown-into", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# T\nbefore\n") and text.endswith(f"{mt.MARKER_END}\nafter\n")
    assert mt.marked_block(text).strip() == mt.render_markdown().strip()
    assert mt.main(["--markdown-into", str(readme)]) == 0
    assert readme.read_text() == text  # idempotent


def test_markdown_into_a_file_without_markers_fails_with_advice(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert mt.main(["--markdown-into", str(readme)]) == 1
    assert "add both markers" in capsys.readouterr().err


def test_readme_matrix_table_is_not_stale():
    block = mt.marked_block(README.read_text(encoding="utf-8"))
    assert block is not None, "README.md lacks the matrix markers"
    assert block.strip() == mt.render_markdown().strip(), \
        "README.md's Tested stacks table is stale: run `make matrix-table`"
