"""The Node stack's prepare(): npm install runs once per package.json and Node version, and
a failed install fails with npm's own message (never a skip). Real npm, no network: the
packages here have no dependencies."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.realworld.stacks.node import (NODE_DIR, STACKS, STAMP_NAME, NpmInstallError,
                                         npm_install)


def _package(directory, **extra):
    manifest = {"name": "prepare-test", "version": "1.0.0", "private": True, **extra}
    (directory / "package.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_npm_runs_once_then_again_when_package_json_changes(tmp_path):
    _package(tmp_path)
    assert npm_install(tmp_path) is True
    assert (tmp_path / "node_modules" / STAMP_NAME).is_file()
    assert npm_install(tmp_path) is False, "a second call with nothing changed ran npm again"
    _package(tmp_path, description="changed")
    assert npm_install(tmp_path) is True
    assert not (tmp_path / "package-lock.json").exists(), "a lock file was written"


def test_npm_runs_again_when_node_modules_is_gone(tmp_path):
    _package(tmp_path)
    npm_install(tmp_path)
    (tmp_path / "node_modules" / STAMP_NAME).unlink()
    assert npm_install(tmp_path) is True


@pytest.mark.parametrize("manifest, fragment", [
    ("{not json", "EJSONPARSE"),
    (json.dumps({"name": "x", "version": "1.0.0", "dependencies": {"x": "file:./absent.tgz"}}),
     "ENOENT: no such file or directory"),
], ids=["package-json-does-not-parse", "dependency-tarball-missing"])
def test_failed_install_raises_with_npms_message(tmp_path, manifest, fragment):
    (tmp_path / "package.json").write_text(manifest, encoding="utf-8")
    with pytest.raises(NpmInstallError) as e:
        npm_install(tmp_path)
    assert "npm install in" in str(e.value) and "failed (exit" in str(e.value)
    assert fragment in str(e.value)
    assert not (tmp_path / "node_modules" / STAMP_NAME).exists()


def test_missing_npm_is_an_error_that_says_so(tmp_path, monkeypatch):
    _package(tmp_path)
    node_only = tmp_path / "bin"
    node_only.mkdir()
    (node_only / "node").symlink_to(shutil.which("node"))
    monkeypatch.setenv("PATH", str(node_only))
    with pytest.raises(NpmInstallError, match="npm not found on PATH"):
        npm_install(tmp_path)


def test_the_stack_prepares_its_own_directory_and_pins_every_dependency():
    (stack,) = STACKS
    assert stack.prepare is not None
    deps = json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]
    loose = {n: v for n, v in deps.items() if not v[:1].isdigit()}
    assert not loose, f"package.json dependencies must be exact versions: {loose}"
    named = {name for kind, name in stack.packages if kind == "npm"}
    assert named <= set(deps), f"the README table names packages not pinned: {named - set(deps)}"
