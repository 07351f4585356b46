"""The audit page's pure parts: which lines a query picks, and reading only the file's end."""

from __future__ import annotations

import json

import pytest
from tornado import web

from operations.audit_page import AuditQuery, details, newest, tail_records


def args(**given: str):
    return lambda name, default="": given.get(name, default)


def test_a_query_refuses_what_can_never_match():
    with pytest.raises(web.HTTPError) as e:
        AuditQuery.parse(args(action="launched"))
    assert e.value.status_code == 400 and "Unknown action 'launched'" in e.value.log_message
    for limit in ("0", "-3", "2001", "lots"):
        with pytest.raises(web.HTTPError) as e:
            AuditQuery.parse(args(limit=limit))
        assert "limit must be a whole number from 1 to 2000" in e.value.log_message
    assert AuditQuery.parse(args(user=" bob ", limit="5")) == AuditQuery(user="bob", limit=5)


def test_newest_matching_lines_first_and_at_most_the_limit():
    records = [
        {"time": f"t{i}", "action": "start" if i % 2 else "stop", "user": "bob" if i < 6 else "eve"}
        for i in range(10)
    ]
    picked = newest(records, AuditQuery(user="bob", action="start", limit=2))
    assert [r["time"] for r in picked] == ["t5", "t3"]
    assert newest(records, AuditQuery(limit=3))[0]["time"] == "t9"


def test_only_the_end_of_the_file_is_read_and_cut_or_bad_lines_are_skipped(tmp_path):
    path = tmp_path / "audit.log"
    lines = [json.dumps({"time": f"t{i}", "action": "stop", "pad": "x" * 50}) for i in range(100)]
    path.write_text("\n".join(lines) + "\nnot json\n[1, 2]\n" + '{"time": "partial')
    window = 10 * (len(lines[0]) + 1) + 40  # ten whole lines, part of an eleventh, the tail
    records = tail_records(path, max_bytes=window)
    assert [r["time"] for r in records][-1] == "t99"
    assert 9 <= len(records) <= 10  # the cut first line is dropped, never half-parsed
    assert tail_records(tmp_path / "none.log") == [] and tail_records(None) == []


def test_details_are_the_fields_without_a_column():
    line = {"time": "t", "action": "stop", "user": "bob", "reason": "idle", "instance_id": "i-1"}
    assert details(line) == "reason=idle, instance_id=i-1"
