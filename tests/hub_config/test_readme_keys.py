"""The README documents every key of the communities file (issue 6: "configuration of
communities (every key)"): its table must be exactly what the schema generates."""

from pathlib import Path

from hub_config.schema_docs import key_table, readme_table
from operations.check import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_key_of_the_schema() -> None:
    table = readme_table(README.read_text(encoding="utf-8"))
    assert table is not None, "README.md lost the communities-keys markers"
    assert table == key_table(), "README is stale: paste `snh keys` into it"


def test_every_schema_key_has_a_description() -> None:
    rows = [line for line in key_table().splitlines()[2:]]
    undocumented = [row.split("|")[1].strip() for row in rows if row.rstrip().endswith("|  |")]
    assert rows and not undocumented


def test_keys_command_prints_the_table(capsys) -> None:
    assert main(["keys"]) == 0
    assert capsys.readouterr().out == key_table()
