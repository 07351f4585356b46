"""cfn-lint over the CloudFormation templates, parliament over the IAM policies, and the
single-sourcing of the policies between ``policies/*.json`` and the templates.

Both linters run as subprocesses from this virtualenv, as an operator would run them; a
finding fails the test with the tool's own output. The only ignores are in
``hub_config/infrastructure/.cfnlintrc`` (none today) and ``.parliament.yaml`` (each with its
reason). parliament reads ARNs, so it is given the policies rendered with example values
(`sources.EXAMPLE_VALUES`); the placeholders themselves are checked by the equality test.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hub_config.infrastructure import sources

BIN = Path(sys.executable).parent
INFRA = sources.HERE


def test_cfn_lint_finds_nothing() -> None:
    """cfn-lint validates every template against CloudFormation's resource specification
    (property names and types, intrinsic functions, references, best-practice rules)."""
    templates = [str(p) for p in sources.TEMPLATES.values()]
    done = subprocess.run(
        [str(BIN / "cfn-lint"), *templates],
        cwd=INFRA,  # so cfn-lint picks up .cfnlintrc
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"cfn-lint findings:\n{done.stdout}{done.stderr}"


def _ignore_rules() -> dict[str, list[dict[str, list[str]]]]:
    config = yaml.safe_load((INFRA / ".parliament.yaml").read_text())
    return {issue: spec.get("ignore_locations", []) for issue, spec in config.items()}


def _ignored(finding: dict[str, Any], rules: dict[str, list[dict[str, list[str]]]]) -> bool:
    """parliament's documented ``ignore_locations`` semantics (which its 1.6.4 CLI fails to
    apply, see .parliament.yaml): an entry matches when, for each of its keys, one of the
    regular expressions fully matches ``str(location[key])``, case-insensitively."""
    location = finding.get("location", {})
    for entry in rules.get(finding["issue"], []):
        if all(
            any(
                re.fullmatch(pattern.lower(), str(location.get(key, "")).lower())
                for pattern in (patterns if isinstance(patterns, list) else [patterns])
            )
            for key, patterns in entry.items()
        ):
            return True
    return False


def test_parliament_finds_nothing_but_the_justified(tmp_path: Path) -> None:
    """parliament (with its community auditors) checks each policy against its copy of the
    Service Authorization Reference: known actions, resource ARN formats per action,
    condition keys per action, operator types, and risky combinations."""
    for name in sources.policy_files():
        (tmp_path / name).write_text(json.dumps(sources.rendered_policy(name), indent=2))
    done = subprocess.run(
        [
            str(BIN / "parliament"),
            "--directory",
            str(tmp_path),
            "--include-community-auditors",
            "--config",
            str(INFRA / ".parliament.yaml"),
            "--json",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode in (0, 1), f"parliament failed:\n{done.stdout}{done.stderr}"
    findings = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 or findings, f"parliament said:\n{done.stdout}{done.stderr}"
    rules = _ignore_rules()
    unjustified = [f for f in findings if not _ignored(f, rules)]
    assert not unjustified, "parliament findings:\n" + "\n".join(json.dumps(f) for f in unjustified)
    # Every ignore still ignores something: a stale one would hide a future finding.
    used = {
        (f["issue"], json.dumps(e))
        for f in findings
        for e in rules.get(f["issue"], [])
        if _ignored(f, {f["issue"]: [e]})
    }
    declared = {(issue, json.dumps(e)) for issue, entries in rules.items() for e in entries}
    assert declared <= used, f"ignores that match no finding: {sorted(declared - used)}"


def test_parliament_ignores_are_explained() -> None:
    """Each ignore in .parliament.yaml has a comment right above it."""
    text = (INFRA / ".parliament.yaml").read_text().splitlines()
    for i, line in enumerate(text):
        if line.strip() == "ignore_locations:":
            assert text[i - 1].strip().startswith("#"), f"line {i + 1}: ignore without reason"


@pytest.mark.parametrize("template", sorted(sources.TEMPLATES))
def test_template_policies_are_the_policy_files(template: str) -> None:
    """Single source: the policy inside each template, with ``${Name}`` read as the
    placeholder ``{{Name}}`` and ``${!var}`` as the IAM variable ``${var}``, equals its file
    in policies/ exactly."""
    parsed = sources.load_template(template)
    for logical_id, source, document in sources.template_policies(parsed):
        assert sources.template_policy_as_source(document) == sources.load_policy(source), (
            f"{template}.yaml {logical_id} differs from policies/{source}"
        )


def test_every_policy_file_is_deployed_once() -> None:
    used = [
        source
        for name in sources.TEMPLATES
        for _, source, _ in sources.template_policies(sources.load_template(name))
    ]
    assert sorted(used) == sorted(sources.policy_files())


def test_every_placeholder_is_a_template_value() -> None:
    """A placeholder must be something CloudFormation can fill in the template that uses
    the file: a pseudo parameter, a template parameter, a Sub variable, a GetAtt or the Ref
    of one of its resources (a secret's ARN)."""
    for name in sources.TEMPLATES:
        parsed = sources.load_template(name)
        known = set(parsed.get("Parameters", {})) | {
            "AWS::Partition",
            "AWS::Region",
            "AWS::AccountId",
        }
        known |= {f"{r}.Arn" for r in parsed.get("Resources", {})}
        known |= set(parsed.get("Resources", {}))
        for _, source, document in sources.template_policies(parsed):
            text = json.dumps(document)
            known |= set(re.findall(r'"([A-Za-z]+)": \{"Fn::ImportValue"', text))
            placeholders = set(
                re.findall(r"\{\{([^}]+)\}\}", json.dumps(sources.load_policy(source)))
            )
            assert placeholders <= known, f"{source}: {sorted(placeholders - known)}"
