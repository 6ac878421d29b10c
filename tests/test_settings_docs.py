"""The settings are documented once, in the settings class; the README's table is generated
from it and must not drift apart."""

from __future__ import annotations

import re

from app.settings import Settings, settings_table
from tests.conftest import ROOT


def test_every_setting_is_described() -> None:
    undocumented = [name for name, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_readme_settings_table_matches_the_settings_class() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- settings-table:start -->\n(.*?)\n<!-- settings-table:end -->", readme, re.S
    )
    assert block is not None, "README.md lost its settings-table markers"
    assert block.group(1) == settings_table(), (
        "README.md's settings table differs from app/settings.py: regenerate it with "
        "settings_table()"
    )


def test_the_table_check_can_fail() -> None:
    table = settings_table()
    assert "| `MODEL_PATH` | `artifacts/model.pkl` |" in table
    assert table.replace("`MODEL_PATH`", "`MODEL_PAHT`") != table
