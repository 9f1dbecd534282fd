"""The README stays true where code can check it: every option is in its table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jupyter_chatbridge.server.app import ChatBridgeApp
from jupyter_chatbridge.server.limits import BridgeLimits

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_configuration_table_lists_every_option() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration") : text.index("### Your own agent")]
    rows = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if "| `" in line}
    options = {f.name for f in dataclasses.fields(BridgeLimits)} | {
        name
        for name, trait in ChatBridgeApp.class_traits(config=True).items()
        if trait.this_class.__module__.startswith("jupyter_chatbridge")
    }
    assert options - rows == set(), "options missing from the README's Configuration table"
    assert rows - options == set(), "README rows that are no option"
