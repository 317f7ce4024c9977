"""The catalogue data file: every SPEC §5 id with its level, validation, the Markdown table."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agent.errors import InputError
from conformance import catalogue as cat
from conformance.registry import REGISTRY
import conformance.engine  # noqa: F401  (registers the checks)

README = Path(__file__).resolve().parents[2] / "README.md"

# SPEC §5: the ids and levels are part of the contract.
SPEC_LEVELS = {
    "KT-001": "MUST", "KT-002": "MUST", "KT-003": "MUST", "KT-004": "SHOULD",
    "KT-005": "MUST", "KT-006": "SHOULD", "KT-007": "MUST",
    "TC-001": "MUST", "TC-002": "MUST", "TC-003": "MUST", "TC-004": "MUST", "TC-005": "MUST",
    "BC-001": "MUST", "BC-002": "MUST", "BC-003": "SHOULD",
    "EC-001": "MUST", "EC-002": "MUST", "EC-003": "MUST", "EC-004": "MUST", "EC-005": "MUST",
    "AL-001": "SHOULD", "AL-002": "SHOULD", "AL-003": "SHOULD", "AL-004": "MUST",
    "SC-001": "MUST", "SC-002": "SHOULD", "SC-003": "MUST", "SC-004": "SHOULD",
}
CATEGORY_OF_PREFIX = {"KT": "kernel-truth", "TC": "trace-context", "BC": "bizcode",
                      "EC": "errcode", "AL": "alignment", "SC": "exposition"}


def test_catalogue_has_exactly_the_spec_ids_with_their_levels_and_categories():
    c = cat.load_catalogue()
    assert {x.id: x.level for x in c.checks} == SPEC_LEVELS
    for x in c.checks:
        assert x.category == CATEGORY_OF_PREFIX[x.prefix], x.id
        assert x.needs_kernel == (x.prefix == "KT"), x.id
        assert x.spec_refs and x.sends and x.expects, x.id


def test_default_thresholds_are_the_spec_budgets():
    t = cat.load_catalogue().default_thresholds()
    assert t["KT-001"]["loss_budget_pct"] == 0.001
    assert t["KT-003"]["drift_p99_ms"] == 8


def test_implemented_flags_agree_with_registered_functions():
    c = cat.load_catalogue()
    implemented = {x.id for x in c.checks if x.implemented}
    assert implemented == set(REGISTRY), "catalogue 'implemented' and @check registry differ"


def _doc() -> dict:
    return yaml.safe_load(cat.CATALOGUE_PATH.read_text(encoding="utf-8"))


def _mutate(fn):
    doc = copy.deepcopy(_doc())
    fn(doc)
    return doc


BROKEN = [
    pytest.param(lambda d: d["checks"].append(copy.deepcopy(d["checks"][0])), "KT-001: duplicate id",
                 id="duplicate-id"),
    pytest.param(lambda d: d["checks"][0].update(level="MUSTNT"), "level 'MUSTNT' is not one of",
                 id="unknown-level"),
    pytest.param(lambda d: d["checks"][0].update(category="vibes"), "category 'vibes' is not one of",
                 id="unknown-category"),
    pytest.param(lambda d: d["checks"][0].pop("title"), "KT-001: missing field 'title'",
                 id="missing-title"),
    pytest.param(lambda d: d["checks"][0].update(id="KT1"), "id must look like KT-001",
                 id="malformed-id"),
    pytest.param(lambda d: d["checks"][0].update(thresholds={"loss_budget_pct": "low"}),
                 "threshold 'loss_budget_pct' must be a number", id="threshold-not-number"),
    pytest.param(lambda d: d["checks"][0].update(implemented="yes"),
                 "implemented must be true or false", id="flag-not-bool"),
    pytest.param(lambda d: d["checks"][0].update(spec_refs=[{"title": "x", "url": "http://a"}]),
                 "url must be https", id="insecure-url"),
    pytest.param(lambda d: d["checks"][0].update(colour="red"), "unknown field 'colour'",
                 id="unknown-field"),
    pytest.param(lambda d: d.update(checks=[]), "checks must be a non-empty list", id="no-checks"),
]


@pytest.mark.parametrize("mutate, fragment", BROKEN)
def test_invalid_catalogues_are_rejected_with_the_reason(mutate, fragment):
    doc = _mutate(mutate)
    assert any(fragment in e for e in cat.validate_catalogue_data(doc)), \
        cat.validate_catalogue_data(doc)
    with pytest.raises(InputError, match="is invalid"):
        cat.parse_catalogue(doc)


def test_the_shipped_catalogue_validates_clean():
    assert cat.validate_catalogue_data(_doc()) == []


def test_markdown_table_has_one_row_per_check_and_escapes_pipes():
    table = cat.render_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "-0" in line]
    assert [r.split("|")[1].strip() for r in rows] == cat.load_catalogue().ids
    assert "\\|p99\\|" in table  # KT-003's "|p99|" must not break the table


def test_markdown_into_rewrites_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# T\n\nbefore\n{cat.MARKER_START}\nold table\n{cat.MARKER_END}\nafter\n")
    assert cat.main(["--markdown-into", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# T\n\nbefore\n") and text.endswith(f"{cat.MARKER_END}\nafter\n")
    assert "old table" not in text
    assert cat.marked_block(text).strip() == cat.render_markdown().strip()
    assert cat.main(["--markdown-into", str(readme)]) == 0  # idempotent
    assert readme.read_text() == text


def test_markdown_into_a_file_without_markers_fails_with_advice(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert cat.main(["--markdown-into", str(readme)]) == 1
    assert "add both markers" in capsys.readouterr().err


def test_readme_catalogue_block_is_not_stale():
    if not README.exists() or cat.marked_block(README.read_text(encoding="utf-8")) is None:
        pytest.skip("README.md has no catalogue markers")
    block = cat.marked_block(README.read_text(encoding="utf-8"))
    assert block.strip() == cat.render_markdown().strip(), \
        "README.md catalogue table is stale: run `make catalogue-table`"
