"""What a notebook server needs of its hub, for tests that run one without a hub."""

from __future__ import annotations

import jupyterhub
import tornado.web


class FakeHubApi(tornado.web.RequestHandler):
    """What ``jupyterhub-singleuser`` asks its hub: the version, and who owns a token."""

    def initialize(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    def get(self, path: str) -> None:
        self.set_header("X-JupyterHub-Version", jupyterhub.__version__)
        if path in ("", "/"):
            self.finish({"version": jupyterhub.__version__})
        elif path == "/user":
            token = self.request.headers.get("Authorization", "").removeprefix("token ").strip()
            name = self.tokens.get(token)
            if name is None:
                raise tornado.web.HTTPError(403)
            self.finish(
                {
                    "kind": "user",
                    "name": name,
                    "admin": False,
                    "groups": [],
                    "scopes": [f"access:servers!user={name}"],
                    "session_id": None,
                }
            )
        else:
            raise tornado.web.HTTPError(404)
