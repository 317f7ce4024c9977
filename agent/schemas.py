"""JSON Schema files shipped with the project: load once, validate with the draft they declare."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any


@lru_cache(maxsize=None)
def load_schema(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def validator(path: Path):
    """A jsonschema validator for the schema at ``path`` (checked itself on first use)."""
    import jsonschema

    schema = load_schema(path)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)
