"""Pages a person sees when sign-in does not work, and what they can do about it.

JupyterHub renders any ``HTTPError`` through its own ``error.html`` and shows the exception's
``jupyterhub_html_message`` when it has one, so every refusal here is an ``HTTPError`` with
an HTML message: the hub's look, no stack trace, a next step for the user. The log line for
the admin is written where the error is raised, with the call that failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from tornado import web

from .claims import team_link

SIGN_IN_AGAIN = '<a class="btn btn-primary" href="{login}">Sign in again</a>'


class SignInError(web.HTTPError):
    """An HTTP error whose page tells the user what happened and what to do next."""

    def __init__(self, status: int, reason: str, html: str, *, log_message: str = "") -> None:
        super().__init__(status, log_message or reason, reason=reason)
        self.jupyterhub_html_message = html


def not_a_member(
    user_name: str, teams: Mapping[str, str], *, admin_contact: str = ""
) -> SignInError:
    """The refusal page: which Synapse teams open this hub, with links to ask to join."""
    items = "".join(
        f'<li><a href="{escape(team_link(tid))}" target="_blank" rel="noopener">'
        f"{escape(name or 'Team ' + tid)}</a> <small>(team {escape(tid)})</small></li>"
        for tid, name in sorted(teams.items(), key=lambda kv: (kv[1], kv[0]))
    )
    contact = f"<p>Questions? Contact {escape(admin_contact)}.</p>" if admin_contact else ""
    html = (
        f'<div id="synapse-team-refusal"><p>You are signed in to Synapse as '
        f"<strong>{escape(user_name)}</strong>, but this hub is only open to members of "
        f"these Synapse teams:</p><ul>{items}</ul>"
        "<p>Ask to join one of them on Synapse. Once a team manager has accepted you, "
        "sign in here again.</p>"
        f"{contact}</div>"
    )
    return SignInError(
        403,
        "Not a member of an allowed Synapse team",
        html,
        log_message=f"Synapse user {user_name} is in none of the allowed teams",
    )


def name_taken(user_name: str, hub_username: str) -> SignInError:
    """A different Synapse account already owns this hub name (see ``identities``)."""
    html = (
        f"<p>The hub account <strong>{escape(hub_username)}</strong> belongs to a different "
        f"Synapse account than the one you signed in with (<strong>{escape(user_name)}"
        "</strong>). This happens when a Synapse user name changes hands.</p>"
        "<p>Please ask a hub administrator to resolve it; your Synapse account is fine.</p>"
    )
    return SignInError(403, "Hub account belongs to another Synapse user", html)


def consent_denied(login_url: str) -> SignInError:
    html = (
        "<p>You chose not to share your Synapse identity with this hub, so it cannot sign "
        "you in. To use the hub, sign in again and click <em>Allow</em> on Synapse's page.</p>"
        f"<p>{SIGN_IN_AGAIN.format(login=escape(login_url))}</p>"
    )
    return SignInError(403, "Sign-in cancelled", html)


def provider_error(login_url: str, error: str, description: str) -> SignInError:
    html = (
        f"<p>Synapse could not complete the sign-in: <code>{escape(error)}</code>"
        f"{': ' + escape(description) if description else ''}.</p>"
        f"<p>{SIGN_IN_AGAIN.format(login=escape(login_url))}</p>"
    )
    return SignInError(400, "Synapse sign-in failed", html)


def stale_attempt(login_url: str) -> SignInError:
    """Wrong/missing state, or a code that was already used or has expired."""
    html = (
        "<p>This sign-in attempt could not be completed: it has expired, was already used, "
        "or was started in another browser tab. Nothing was changed.</p>"
        f"<p>{SIGN_IN_AGAIN.format(login=escape(login_url))}</p>"
    )
    return SignInError(400, "Sign-in link expired", html)


def synapse_unavailable(login_url: str, what: str) -> SignInError:
    html = (
        f"<p>Synapse did not answer while {escape(what)}. This is usually brief; "
        "please try again in a minute.</p>"
        f"<p>{SIGN_IN_AGAIN.format(login=escape(login_url))}</p>"
    )
    return SignInError(503, "Synapse is not answering", html)


def unexpected_answer(login_url: str) -> SignInError:
    html = (
        "<p>Synapse answered in a way this hub does not understand, so it cannot sign you "
        "in. The hub administrator has the details in the hub's log.</p>"
        f"<p>{SIGN_IN_AGAIN.format(login=escape(login_url))}</p>"
    )
    return SignInError(502, "Unexpected answer from Synapse", html)
