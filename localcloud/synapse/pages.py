"""The sign-in and consent page that stands in for https://signin.synapse.org.

Real Synapse sends the browser to a web app that signs the user in, shows the client's name
and what it asks for (from POST /auth/v1/oauth2/description) and, on "Allow", calls POST
/auth/v1/oauth2/consent and redirects back with the code. The stand-in does the same with one
plain HTML form (no JavaScript, no password, so Playwright can drive it):

* ``GET /signin?response_type=code&client_id=..&redirect_uri=..&scope=..&claims=..&state=..
  &nonce=..`` shows the form: a text input ``username`` (id ``username``) and two submit
  buttons named ``consent``: "Allow" (id ``allow``, value ``allow``) and "Deny" (id ``deny``,
  value ``deny``). The request parameters travel along as hidden fields.
* An unknown client or a ``redirect_uri`` not registered for it (exact match) gets an HTML
  error page and no redirect: RFC 6749 4.1.2.1 forbids redirecting to an unverified URI.
* Any other bad parameter (response_type, scope, claims) is sent back to the client as
  ``redirect_uri?error=...&error_description=...&state=...`` (RFC 6749 4.1.2.1).
* ``POST /signin``: "Deny" redirects with ``error=access_denied``; "Allow" with a known user
  name or email signs that user in and redirects with ``code`` and ``state``; an unknown user
  gets the form again with a message.

Differences from signin.synapse.org: no password or second factor, and consent is asked every
time (Synapse skips the question when the same user granted the same scopes to the same client
within a year).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tornado.escape import xhtml_escape

from .claims import consent_descriptions, parse_scope_string
from .errors import OAuthError, SynapseError
from .handlers import StandInHandler

if TYPE_CHECKING:
    from .directory import OAuthClient

REQUEST_PARAMS = ("response_type", "client_id", "redirect_uri", "scope", "claims", "state", "nonce")

_STYLE = """
body { font-family: sans-serif; max-width: 36em; margin: 3em auto; color: #222; }
h1 { font-size: 1.4em; } .error { color: #a00; } .client { font-weight: bold; }
label, input, button { font-size: 1em; } button { margin-right: 1em; padding: .3em 1.2em; }
"""


def add_query(url: str, params: dict[str, str | None]) -> str:
    """``url`` with ``params`` appended to whatever query it already has (None values left out)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend((k, v) for k, v in params.items() if v is not None)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{xhtml_escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n{body}\n</body></html>\n"
    )


class SigninHandler(StandInHandler):
    """GET shows the sign-in and consent form; POST acts on the user's answer."""

    def _params(self) -> dict[str, str | None]:
        return {name: self.param(name) for name in REQUEST_PARAMS}

    def _error_page(self, error: SynapseError) -> None:
        """Errors that must not be redirected: shown to the user (400)."""
        self.set_status(400)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(
            _page(
                "Synapse sign-in error",
                "<h1>This sign-in request cannot be completed</h1>\n"
                f'<p class="error" id="error">{xhtml_escape(error.reason)}</p>\n'
                "<p>The request does not name a registered application and one of its "
                "registered addresses, so you were not sent back to it.</p>",
            )
        )

    def _redirect_error(
        self, params: dict[str, str | None], error: str, description: str | None
    ) -> None:
        assert params["redirect_uri"] is not None
        self.redirect(
            add_query(
                params["redirect_uri"],
                {"error": error, "error_description": description, "state": params["state"]},
            )
        )

    def _form(
        self, client: OAuthClient, params: dict[str, str | None], message: str | None = None
    ) -> None:
        request = self.standin.tokens.authorization_request(params)
        scopes = parse_scope_string(request.scope)
        items = "".join(
            f"<li>{xhtml_escape(d)}</li>" for d in consent_descriptions(scopes, request.claims)
        )
        hidden = "".join(
            f'<input type="hidden" name="{name}" value="{xhtml_escape(value)}">'
            for name, value in params.items()
            if value is not None
        )
        error = f'<p class="error" id="error">{xhtml_escape(message)}</p>\n' if message else ""
        scope_list = " ".join(scopes) or "(none)"
        body = (
            "<h1>Sign in with Synapse</h1>\n"
            f'<p><span class="client" id="client-name">{xhtml_escape(client.name)}</span> '
            "requests permission:</p>\n"
            f'<ul id="permissions">{items}</ul>\n'
            f'<p>Scopes: <code id="scopes">{xhtml_escape(scope_list)}</code></p>\n'
            f"{error}"
            '<form method="post" action="/signin">\n'
            f"{hidden}\n"
            '<p><label for="username">Synapse user name or email</label><br>'
            '<input type="text" id="username" name="username" autocomplete="username" '
            "autofocus></p>\n"
            '<p><button type="submit" id="allow" name="consent" value="allow">Allow</button>'
            '<button type="submit" id="deny" name="consent" value="deny">Deny</button></p>\n'
            "</form>"
        )
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(_page("Sign in with Synapse", body))

    def _checked(self) -> tuple[OAuthClient, dict[str, str | None]] | None:
        """Validate the request; answers (error page or redirect) and returns None on error."""
        params = self._params()
        tokens = self.standin.tokens
        try:
            client = tokens.client_for_request(params["client_id"], params["redirect_uri"])
        except SynapseError as exc:
            self._error_page(exc)
            return None
        try:
            tokens.authorization_request(params)
        except OAuthError as exc:
            self._redirect_error(params, exc.error, exc.description)
            return None
        return client, params

    def get(self) -> None:
        checked = self._checked()
        if checked is not None:
            self._form(*checked)

    def post(self) -> None:
        checked = self._checked()
        if checked is None:
            return
        client, params = checked
        if self.param("consent") != "allow":
            self._redirect_error(params, "access_denied", "The user denied the request.")
            return
        name = (self.param("username") or "").strip()
        user = self.standin.directory.find_user(name) if name else None
        if user is None:
            self._form(client, params, message=f"No Synapse account is named {name!r}.")
            return
        tokens = self.standin.tokens
        tokens.record_login(user.user_id)
        code = tokens.authorize(user.user_id, tokens.authorization_request(params))
        assert params["redirect_uri"] is not None
        self.redirect(add_query(params["redirect_uri"], {"code": code, "state": params["state"]}))
