"""Errcode catalogue intake: JSON and YAML, both shapes, wire codes, and a file that does not
parse recorded (not fatal) so that EC-005 can fail on it."""

from __future__ import annotations

import json

import pytest
import yaml

from agent import scenario as S
from agent.errcodes import entry_wire_code, load_catalogue, wire_code
from agent.errors import InputError
from examples.refservice import CATALOGUE_PATH

ENTRIES = json.loads(CATALOGUE_PATH.read_text())["errcodes"]


@pytest.mark.parametrize(("domain", "reason", "code"), [
    ("AUTH", 1, "AUTH_001"),
    ("PAYMENT", 0x105, "PAYMENT_105"),
    ("INVENTORY", 26, "INVENTORY_01A"),
    ("SYSTEM", 0, "SYSTEM_000"),
    ("X", 0xFFF, "X_FFF"),
], ids=lambda v: str(v))
def test_wire_code_is_domain_and_three_upper_case_hex_digits(domain, reason, code):
    assert wire_code(domain, reason) == code
    assert entry_wire_code({"domain": domain, "reason": reason}) == code


@pytest.mark.parametrize(("entry", "problem"), [
    ({"domain": "A", "reason": 0x1000}, "reason"),
    ({"domain": "A", "reason": -1}, "reason"),
    ({"domain": "A", "reason": "1"}, "reason"),
    ({"domain": "A", "reason": True}, "reason"),
    ({"domain": "A", "reason": 1.0}, "reason"),
    ({"domain": "", "reason": 1}, "domain"),
    ({"reason": 1}, "domain"),
], ids=["over-fff", "negative", "string", "bool", "float", "empty-domain", "no-domain"])
def test_no_wire_code_without_a_domain_and_a_reason_in_range(entry, problem):
    assert entry_wire_code(entry) is None
    with pytest.raises(ValueError, match=problem):
        wire_code(entry.get("domain"), entry.get("reason"))


def test_entry_wire_code_of_a_non_mapping_is_none():
    assert entry_wire_code(["AUTH", 1]) is None


@pytest.mark.parametrize("shape", ["mapping", "list"])
@pytest.mark.parametrize("fmt", ["json", "yaml", "yml"])
def test_json_and_yaml_catalogues_load_the_raw_entries(tmp_path, fmt, shape):
    data = {"service": "s", "errcodes": ENTRIES} if shape == "mapping" else ENTRIES
    path = tmp_path / f"errcodes.{fmt}"
    path.write_text(json.dumps(data) if fmt == "json" else yaml.safe_dump(data))
    cat = load_catalogue(path)
    assert (cat.entries, cat.source, cat.error) == (ENTRIES, str(path.resolve()), "")
    assert [entry_wire_code(e) for e in cat.entries][:2] == ["AUTH_001", "ITEM_001"]


def test_entries_are_kept_raw_even_when_invalid(tmp_path):
    # Duplicates, a bad status, a non-mapping: judging them is EC-005's job, not intake's.
    entries = [ENTRIES[0], ENTRIES[0], {**ENTRIES[1], "http_status": 999}, "not an entry"]
    path = tmp_path / "c.json"
    path.write_text(json.dumps(entries))
    assert load_catalogue(path).entries == entries


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("c.json", '{"errcodes": [', "not valid JSON (line 1"),
    ("c.yaml", "errcodes: [\n  - {name: A\n", "not valid YAML (line 2"),
    ("c.json", '"just a string"', "expected a list of errcode entries or a mapping with an 'errcodes' list, got str"),
    ("c.json", '{"errcodes": {"A": 1}}', "errcodes must be a list of entries, got dict"),
    ("c.json", '{"codes": []}', "got dict"),
    ("c.yaml", "", "got NoneType"),
], ids=["bad-json", "bad-yaml", "scalar", "errcodes-not-list", "no-errcodes-key", "empty-yaml"])
def test_a_catalogue_that_does_not_parse_is_recorded_not_fatal(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text)
    cat = load_catalogue(path)
    assert cat.entries == [] and cat.source == str(path.resolve())
    assert fragment in cat.error and "\n" not in cat.error
    # ... and it reaches RunMeta.scenario for EC-005.
    s = S.from_paths(["/"], catalog=path)
    assert (s["errcodes"], s["errcodes_source"]) == ([], str(path.resolve())) and fragment in s["errcodes_error"]


def test_a_yaml_error_does_not_quote_the_file():
    # YAML's own message quotes the offending lines; a daemon must not echo file content.
    from agent.errcodes import parse_text

    with pytest.raises(ValueError) as e:
        parse_text("secret: [\n  - {token: hunter2\n", ".yaml")
    assert "hunter2" not in str(e.value)


def test_a_missing_catalogue_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match=r"cannot read errcode catalogue .*missing\.json.*check --catalog"):
        load_catalogue(tmp_path / "missing.json")


def test_a_scenario_catalogue_resolves_against_the_scenario_directory(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "codes.json").write_text(json.dumps(ENTRIES[:1]))
    (tmp_path / "cfg" / "s.json").write_text(json.dumps({"load": [{"path": "/"}], "catalogue": "codes.json"}))
    monkeypatch.chdir(tmp_path)  # not the scenario's directory
    s = S.from_file("cfg/s.json")
    assert s["errcodes"] == ENTRIES[:1] and s["errcodes_source"] == str(tmp_path / "cfg" / "codes.json")


def test_catalog_option_overrides_the_scenario_catalogue(tmp_path):
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"errcodes": ENTRIES[2:3]}))
    s = S.from_file(_scenario_with_catalogue(tmp_path), catalog=tmp_path / "other.yaml")
    assert s["errcodes"] == ENTRIES[2:3] and s["errcodes_source"].endswith("other.yaml")


def _scenario_with_catalogue(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"load": [{"path": "/"}], "catalogue": str(CATALOGUE_PATH)}))
    return path


def test_inline_errcodes_are_kept_as_given():
    s = S.from_inline({"load": [{"path": "/"}], "errcodes": ENTRIES[:2]})
    assert (s["errcodes"], s["errcodes_source"], s["errcodes_error"]) == (ENTRIES[:2], "inline", "")
