"""Sending one e-mail through the hub's SMTP settings (`hub_config.settings.SmtpSettings`):
the managers' reports (`operations.reports`) and the warning before a server is stopped
(`operations.stop_watch`) go the same way, so one set of TLS and login rules is tested."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from hub_config.settings import SmtpSettings


def send(message: EmailMessage, smtp: SmtpSettings) -> None:
    """Send ``message`` (blocking: call it in a thread). Raises `smtplib.SMTPException` or
    `OSError` naming the failure; the caller says whose message it was."""
    context = ssl.create_default_context()
    if smtp.tls == "ssl":
        client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, context=context, timeout=30)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=30)
    with client:
        if smtp.tls == "starttls":
            client.starttls(context=context)
        if smtp.user:
            client.login(smtp.user, smtp.password or "")
        client.send_message(message)
