"""The templates and policy documents of this directory, loaded and rendered for tests.

Single source: every IAM policy exists once as JSON in ``policies/``, readable and checkable
by ``parliament``, with deployment values as ``{{Name}}`` placeholders (``{{AWS::Region}}``,
``{{HubId}}``, ``{{ParameterKey.Arn}}``, ``{{CryptKeySecret}}`` for the ``!Ref`` of a
resource ...) and IAM's own policy variables as ``${...}``.
The CloudFormation templates carry the same documents in their native form (``!Sub`` with
``${Name}`` for deployment values and ``${!...}`` for IAM variables), each managed policy
naming its file in ``Metadata.PolicyFile``. `template_policy_as_source` turns a template's
document back into placeholder form, and a test demands equality with the file. The
templates stay plain CloudFormation that an operator can read and deploy as is; nothing is
generated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import cfnlint.decode

HERE = Path(__file__).resolve().parent
POLICY_DIR = HERE / "policies"
TEMPLATES = {name: HERE / f"{name}.yaml" for name in ("network", "hub", "community", "hub-host")}

#: Values used to render placeholders for parliament and for the evaluator tests. They
#: follow the shipped demo communities file (account 123456789012, us-east-1) and the
#: spawner's defaults (hub id and parameter prefix).
_EXAMPLE_KEY = "arn:aws:kms:us-east-1:123456789012:key/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
EXAMPLE_VALUES: dict[str, str] = {
    "AWS::Partition": "aws",
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "HubId": "synapse-notebook-hub",
    "ParameterPrefix": "synapse-notebook-hub",
    "VpcId": "vpc-0a1b2c3d4e5f60718",
    "ParameterKey.Arn": _EXAMPLE_KEY,
    "ParameterKeyArn": _EXAMPLE_KEY,
    "EcrRepositoryPattern": "synapse-notebook-hub/*",
    # hub-host.yaml's secrets: ``!Ref`` of a Secrets Manager secret is its ARN, whose name
    # ends in a random six-character suffix.
    "SynapseClientSecret": (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:SynapseClientSecret-AbCdEf"
    ),
    "CryptKeySecret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:CryptKeySecret-GhIjKl",
    "DatabaseUrlSecretArn": (
        "arn:aws:secretsmanager:us-east-1:123456789012:secret:synapse-notebook-hub/db-url-MnOpQr"
    ),
}

_PLACEHOLDER = re.compile(r"\{\{([A-Za-z0-9:.]+)\}\}")
_SUB_VARIABLE = re.compile(r"\$\{(!?)([^}]*)\}")


def policy_files() -> dict[str, Path]:
    return {p.name: p for p in sorted(POLICY_DIR.glob("*.json"))}


def load_policy(name: str) -> dict[str, Any]:
    """A policy document of ``policies/`` as written (placeholders unrendered)."""
    return json.loads((POLICY_DIR / name).read_text())


def render(value: Any, values: Mapping[str, str] = EXAMPLE_VALUES) -> Any:
    """``value`` (a document or a string) with every ``{{Name}}`` replaced; an unknown name
    raises KeyError, so a new placeholder cannot slip through untested."""
    if isinstance(value, str):
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], value)
    if isinstance(value, list):
        return [render(v, values) for v in value]
    if isinstance(value, dict):
        return {render(k, values): render(v, values) for k, v in value.items()}
    return value


def rendered_policy(name: str, values: Mapping[str, str] = EXAMPLE_VALUES) -> dict[str, Any]:
    return render(load_policy(name), values)


def load_template(name: str) -> dict[str, Any]:
    """A template parsed by cfn-lint's own decoder (it knows ``!Sub``, ``!Ref``, ...), as
    plain dicts and lists in the long form (``{"Fn::Sub": ...}``)."""
    template, matches = cfnlint.decode.decode(str(TEMPLATES[name]))
    if matches or template is None:
        raise ValueError(f"{name}.yaml does not parse: {matches}")
    return _plain(template)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


def template_policies(template: Mapping[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """(logical id, policy file, document) of every resource that names a policy file."""
    for logical_id, resource in template.get("Resources", {}).items():
        source = resource.get("Metadata", {}).get("PolicyFile")
        if source:
            yield logical_id, source, resource["Properties"]["PolicyDocument"]


def template_policy_as_source(document: Any) -> Any:
    """A template's policy document in the placeholder form of ``policies/*.json``.

    ``{"Fn::Sub": "…${X}…${!iam:var}…"}`` becomes ``"…{{X}}…${iam:var}…"`` (the list form of
    Sub too: its variables are placeholders by name), ``{"Ref": "X"}`` becomes ``"{{X}}"``
    and ``{"Fn::GetAtt": ["X", "Arn"]}`` becomes ``"{{X.Arn}}"``. Anything else intrinsic
    raises ValueError: the comparison must not silently pass over it.
    """
    if isinstance(document, dict):
        if len(document) == 1:
            ((key, value),) = document.items()
            if key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                return _SUB_VARIABLE.sub(
                    lambda m: "${" + m.group(2) + "}" if m.group(1) else "{{" + m.group(2) + "}}",
                    text,
                )
            if key == "Ref":
                return "{{" + value + "}}"
            if key == "Fn::GetAtt":
                parts = value.split(".", 1) if isinstance(value, str) else value
                return "{{" + ".".join(parts) + "}}"
            if key.startswith("Fn::"):
                raise ValueError(f"{key} in a policy document: not comparable with its file")
        return {k: template_policy_as_source(v) for k, v in document.items()}
    if isinstance(document, list):
        return [template_policy_as_source(v) for v in document]
    return document
