"""Scopes and OIDC claims: names, parsing, consent descriptions, and live claim values.

Facts taken from Synapse (Sage-Bionetworks/Synapse-Repository-Services):

* scopes (OAuthScope.json): openid, email, profile, view, download, modify, authorize,
  offline_access. The ``scope`` parameter is URL-decoded once more and split on single
  whitespace characters; an unknown scope is ``invalid_scope "Unrecognized scope: X"``
  (OpenIDConnectManagerImpl.parseScopeString);
* claim names (OIDCClaimName.json), in Synapse's order; unrecognised names in a ``claims``
  request are dropped (OpenIDConnectManagerImpl.normalizeClaims);
* a claim request detail is ``null`` or ``{essential, value, values}`` (OIDCClaimsRequestDetails
  .json);
* claim values come from claim providers at request time (claimprovider/*.java): ``userid`` is
  the principal id as a string; ``user_name``; ``email`` the notification email;
  ``email_verified`` always true; ``given_name``, ``family_name``, ``company`` from the profile;
  ``orcid``; ``is_certified``; ``is_validated``; ``validated_at`` in epoch seconds and the
  ``validated_*`` claims only for validated users; ``team`` is the subset of the requested
  ``value``/``values`` team ids the user belongs to (an empty list when the claim was requested
  without details). A claim whose value is null is left out (OIDC Core 5.3.2);
* only with the ``openid`` scope are claims given at all; the ``email`` scope adds ``email`` and
  ``email_verified``, the ``profile`` scope adds ``family_name``, ``given_name``, ``company``
  and ``user_name`` (OpenIDConnectManagerImpl.getUserInfo, EMAIL_CLAIMS, PROFILE_CLAIMS);
* consent descriptions: OAuthPermissionUtils.scopeDescription and each provider's
  ``getDescription``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote_plus

from .directory import Directory
from .errors import IllegalArgument, OAuthBadRequest

SCOPES = (
    "openid",
    "email",
    "profile",
    "view",
    "download",
    "modify",
    "authorize",
    "offline_access",
)

CLAIM_NAMES = (
    "iss",
    "sub",
    "aud",
    "iat",
    "nbf",
    "exp",
    "auth_time",
    "email",
    "email_verified",
    "given_name",
    "family_name",
    "company",
    "team",
    "userid",
    "user_name",
    "orcid",
    "is_certified",
    "is_validated",
    "validated_given_name",
    "validated_family_name",
    "validated_location",
    "validated_email",
    "validated_company",
    "validated_orcid",
    "validated_at",
    "refresh_token_id",
    "token_type",
)

SCOPE_DESCRIPTIONS = {
    "openid": "To see your identity",
    "email": "To see your email address",
    "profile": "To see your user profile",
    "view": "To view the content which you can view",
    "modify": "To modify the content which you can modify (create, change, delete)",
    "download": "To download the content which you can download",
    "authorize": "To authorize others to access to resources you control",
    "offline_access": (
        "To access the resources authorized here when you are not logged in, "
        "until you revoke access from this application."
    ),
}

CLAIM_DESCRIPTIONS = {
    "company": "To see your company, if you share it with Synapse",
    "email": "To see your primary email address",
    "email_verified": (
        "To see whether Synapse verified your email address. (Always true for Synapse.)"
    ),
    "family_name": "To see your last name, if you share it with Synapse",
    "given_name": "To see your first name, if you share it with Synapse",
    "is_certified": "To see whether you are a certified Synapse user",
    "is_validated": "To see whether you are a validated Synapse user",
    "orcid": "To see the ORCID you have linked to your Synapse account, if any",
    "team": "To see your team membership",
    "userid": "To see your Synapse user ID, which can be used to access your public profile",
    "user_name": "To see your Synapse username",
    "validated_at": (
        "If you are a validated user, to see the date when your profile was validated"
    ),
    "validated_company": (
        "If you are a validated user, to see your validated company or organization"
    ),
    "validated_email": "If you are a validated user, to see your validated email",
    "validated_family_name": "If you are a validated user, to see your validated last name",
    "validated_given_name": "If you are a validated user, to see your validated first name",
    "validated_location": "If you are a validated user, to see your validated location",
    "validated_orcid": "If you are a validated user, to see your validated ORCID",
}

EMAIL_CLAIMS: dict[str, None] = {"email": None, "email_verified": None}
PROFILE_CLAIMS: dict[str, None] = {
    "family_name": None,
    "given_name": None,
    "company": None,
    "user_name": None,
}

ClaimDetails = dict[str, Any] | None
ClaimRequest = dict[str, ClaimDetails]


def parse_scope_string(scope: str | None) -> list[str]:
    """Scopes of a request, as OpenIDConnectManagerImpl.parseScopeString reads them."""
    if not scope:
        return []
    decoded = unquote_plus(scope)
    tokens = re.split(r"\s", decoded)
    while tokens and tokens[-1] == "":  # Java's String.split drops trailing empty strings
        tokens.pop()
    for token in tokens:
        if token not in SCOPES:
            raise OAuthBadRequest("invalid_scope", f"Unrecognized scope: {token}")
    return tokens


def _details(raw: Any) -> ClaimDetails:
    """One claim's request details, with Synapse's three fields (``values`` as strings)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise IllegalArgument(f"Claim details must be a JSON object or null, not {raw!r}")
    values = raw.get("values")
    if values is not None:
        if not isinstance(values, list):
            raise IllegalArgument("'values' in a claim request must be a JSON array")
        # JSON numbers are accepted too: clients commonly send team ids unquoted.
        values = [str(v) for v in values]
    value = raw.get("value")
    return {
        "essential": raw.get("essential"),
        "value": None if value is None else str(value),
        "values": values,
    }


def normalize_claims(claims: Any) -> dict[str, ClaimRequest]:
    """``{"id_token": {...}, "userinfo": {...}}`` with unknown claim names dropped."""
    if claims is None:
        claims = {}
    if not isinstance(claims, dict):
        raise IllegalArgument("The claims parameter must be a JSON object")
    result: dict[str, ClaimRequest] = {}
    for target in ("id_token", "userinfo"):
        requested = claims.get(target) or {}
        if not isinstance(requested, dict):
            raise IllegalArgument(f"claims.{target} must be a JSON object")
        result[target] = {
            name: _details(details) for name, details in requested.items() if name in CLAIM_NAMES
        }
    return result


def parse_claims_parameter(raw: str | None) -> dict[str, ClaimRequest]:
    """The ``claims`` request parameter (a JSON document, OIDC Core 5.5), normalised."""
    if raw is None or raw.strip() == "":
        return normalize_claims(None)
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise IllegalArgument(f"The claims parameter is not valid JSON: {exc}") from exc
    return normalize_claims(parsed)


def consent_descriptions(scopes: Iterable[str], claims: dict[str, ClaimRequest]) -> list[str]:
    """What the consent page lists, as getScopeDescription builds it (sorted, no duplicates)."""
    scopes = list(scopes)
    descriptions = {SCOPE_DESCRIPTIONS[s] for s in scopes if s != "openid"}
    if "openid" in scopes:
        for target in ("userinfo", "id_token"):
            for name in claims.get(target, {}):
                if name in CLAIM_DESCRIPTIONS:
                    descriptions.add(CLAIM_DESCRIPTIONS[name])
    return sorted(descriptions)


def claim_value(directory: Directory, user_id: str, name: str, details: ClaimDetails) -> Any:
    """The current value of one claim for one user (None: no value, leave the claim out)."""
    user = directory.get_user(user_id)
    if user is None:
        return None
    validated = user.is_validated
    if name == "userid":
        return user.user_id
    if name == "user_name":
        return user.user_name
    if name == "email":
        return user.email or None
    if name == "email_verified":
        return True
    if name == "given_name":
        return user.first_name or None
    if name == "family_name":
        return user.last_name or None
    if name == "company":
        return user.company
    if name == "orcid":
        return user.orcid
    if name == "is_certified":
        return user.is_certified
    if name == "is_validated":
        return validated
    if name == "validated_at":
        return user.validated_at
    if name == "team":
        if details is None:
            return []
        requested: set[str] = set()
        if details.get("value"):
            requested.add(details["value"])
        requested.update(details.get("values") or [])
        return directory.filter_user_groups(user_id, requested)
    if not validated:
        return None
    validated_fields = {
        "validated_given_name": user.first_name or None,
        "validated_family_name": user.last_name or None,
        "validated_location": user.location,
        "validated_email": user.email or None,
        "validated_company": user.company,
        "validated_orcid": user.orcid,
    }
    return validated_fields.get(name)


def user_info(
    directory: Directory, user_id: str, scopes: Iterable[str], requested: ClaimRequest
) -> dict[str, Any]:
    """Claims for an id token or the userinfo endpoint (OpenIDConnectManagerImpl.getUserInfo)."""
    scopes = list(scopes)
    result: dict[str, Any] = {}
    if "openid" not in scopes:
        return result

    def add(claims: ClaimRequest) -> None:
        for name, details in claims.items():
            value = claim_value(directory, user_id, name, details)
            if value is not None:
                result[name] = value

    add(requested)
    if "email" in scopes:
        add(EMAIL_CLAIMS)
    if "profile" in scopes:
        add(PROFILE_CLAIMS)
    return result
