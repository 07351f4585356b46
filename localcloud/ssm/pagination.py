"""NextToken values: opaque to clients, checked on the way back in.

AWS tokens are opaque strings; a client must pass back exactly what it got, for the same
listing. The stand-in's token names the listing it belongs to and the offset to go on from, so
a token from another listing (or a made-up one) is answered with ``InvalidNextToken``.
"""

from __future__ import annotations

import base64
import json


def encode_page_token(offset: int, scope: str) -> str:
    raw = json.dumps({"s": scope, "o": offset}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_page_token(token: str, scope: str) -> int | None:
    """The offset a token stands for, or ``None`` when it is not one of this listing's."""
    try:
        body = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError):
        return None
    if not isinstance(body, dict) or body.get("s") != scope:
        return None
    offset = body.get("o")
    return offset if isinstance(offset, int) and offset >= 0 else None
