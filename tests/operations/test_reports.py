"""A community's spend report (`operations.reports`): figures against a hand-computed month
(and last month), the CSV rows, and the e-mail as a real SMTP server on loopback (aiosmtpd)
receives it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import smtplib

import pytest

from hub_config import load_communities
from hub_config.communities import PriceTable
from hub_config.settings import SettingsError, SmtpSettings
from operations.budget import Stored
from operations.reports import build_report, send_report
from tests.integration.harness import free_port
from tests.smtp_inbox import smtp_inbox

COMMUNITIES = load_communities("hub_config/communities.yaml")
AD = dataclasses.replace(
    COMMUNITIES.communities[0],
    managers=("manager@example.org", "deputy@example.org"),
    budget_usd_per_month=50.0,
)
PRICES = PriceTable("2024-06-01", "test list prices", ebs_gb_month=0.08, snapshot_gb_month=0.05)
NOW = dt.datetime(2026, 3, 15, 12, 0, tzinfo=dt.UTC)


def line(action: str, when: dt.datetime, user: str, server: str = "", **fields) -> dict:
    return {
        "time": when.isoformat().replace("+00:00", "Z"),
        "action": action,
        "instance_id": f"i-{user}{server}",
        "user": user,
        "server": server,
        "community": AD.id,
        **fields,
    }


RECORDS = [
    # alice: 2 h of t3.large in February and 2 h in March, then 8 h of t3.xlarge
    line("launch", dt.datetime(2026, 2, 28, 22, tzinfo=dt.UTC), "alice", instance_type="t3.large"),
    line("stop", dt.datetime(2026, 3, 1, 2, tzinfo=dt.UTC), "alice"),
    line("resume", dt.datetime(2026, 3, 10, 9, tzinfo=dt.UTC), "alice", instance_type="t3.xlarge"),
    line("stop", dt.datetime(2026, 3, 10, 17, tzinfo=dt.UTC), "alice"),
    # bob's named server "gpu": 1 h of t3.large on 2 March
    line("launch", dt.datetime(2026, 3, 2, 8, tzinfo=dt.UTC), "bob", "gpu",
         instance_type="t3.large"),
    line("stop", dt.datetime(2026, 3, 2, 9, tzinfo=dt.UTC), "bob", "gpu"),
]  # fmt: skip
STORED = [Stored("alice", AD.id, 31, dt.datetime(2026, 2, 27, tzinfo=dt.UTC))]


def report():
    communities = dataclasses.replace(COMMUNITIES, communities=(AD, *COMMUNITIES.communities[1:]))
    return build_report(AD, RECORDS, {}, STORED, communities, PRICES, NOW)


def test_the_report_against_a_hand_computed_month() -> None:
    r = report()
    assert r.month == "March 2026"
    alice, bob = r.servers  # the most expensive first
    assert (alice.user, alice.server, alice.instance_type) == ("alice", "", "t3.xlarge")
    assert alice.hours == pytest.approx(10)
    assert alice.spend.compute_usd == pytest.approx(2 * 0.0832 + 8 * 0.1664)
    # 31 GB for 14.5 of March's 31 days at $0.08 / GB-month
    assert alice.spend.storage_usd == pytest.approx(31 * 0.08 * 14.5 / 31)
    assert (bob.user, bob.server, bob.hours) == ("bob", "gpu", pytest.approx(1))
    assert r.total.usd == pytest.approx(alice.spend.usd + 0.0832)
    assert [u for u, _ in r.top_spenders] == ["alice", "bob"]
    # February: alice's 2 h of t3.large, and the volume from 27 February (2 of 28 days)
    assert r.last_month.usd == pytest.approx(2 * 0.0832 + 31 * 0.08 * 2 / 28)
    change = (r.total.usd - r.last_month.usd) / r.last_month.usd
    assert r.trend.startswith(f"{change:+.0%} against last month's $")
    assert "of the $50.00 budget" in r.text()


def test_the_csv_has_one_row_per_server() -> None:
    rows = report().csv().splitlines()
    assert rows[0] == "user,server,instance_type,hours,compute_usd,storage_usd,total_usd,complete"
    assert rows[1].startswith("alice,,t3.xlarge,10.00,1.4976,1.1600,2.6576,yes")
    assert rows[2] == "bob,gpu,t3.large,1.00,0.0832,0.0000,0.0832,yes"


@pytest.fixture
def smtp_server():
    with smtp_inbox() as server:
        yield server


def test_the_managers_receive_the_report_with_its_csv(smtp_server) -> None:
    inbox, port = smtp_server
    smtp = SmtpSettings("127.0.0.1", port, tls="none", sender="hub@example.org")
    assert send_report(report(), smtp)
    [envelope] = inbox.envelopes
    assert envelope.mail_from == "hub@example.org"
    assert sorted(envelope.rcpt_tos) == ["deputy@example.org", "manager@example.org"]
    message = email.message_from_bytes(envelope.content, policy=email.policy.default)
    assert message["Subject"].startswith("Notebook spend, AD Knowledge Portal (demo), March 2026")
    body = message.get_body(("plain",)).get_content()
    assert "Top spenders:" in body and "alice" in body and "list prices of 2024-06-01" in body
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "ad-portal-march-2026.csv"
    assert attachment.get_content() == report().csv()


def test_an_unreachable_smtp_server_is_an_error_naming_it() -> None:
    smtp = SmtpSettings("127.0.0.1", free_port(), tls="none")
    with pytest.raises((OSError, smtplib.SMTPException)):
        send_report(report(), smtp)


def test_no_managers_no_mail() -> None:
    lonely = dataclasses.replace(report(), community=dataclasses.replace(AD, managers=()))
    assert not send_report(lonely, SmtpSettings("127.0.0.1", 1, tls="none"))


@pytest.mark.parametrize(
    ("env", "problem"),
    [({"SNH_SMTP_TLS": "maybe"}, "SNH_SMTP_TLS"), ({"SNH_SMTP_PORT": "smtp"}, "SNH_SMTP_PORT")],
)
def test_bad_smtp_settings_name_the_variable(env, problem) -> None:
    with pytest.raises(SettingsError, match=problem):
        SmtpSettings.from_environ({"SNH_SMTP_HOST": "mail.example.org", **env})
    assert SmtpSettings.from_environ({}) is None
    assert SmtpSettings.from_environ({"SNH_SMTP_HOST": "m", "SNH_SMTP_TLS": "ssl"}).port == 465
