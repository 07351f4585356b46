"""The stand-in's RSA signing key: JWT signing, parsing, and the JSON Web Key Set.

Facts taken from Synapse (file names in Sage-Bionetworks/Synapse-Repository-Services):

* tokens are RS256 JWS with header ``typ: JWT`` and ``kid`` (OIDCTokenManagerImpl.
  createSignedJWT);
* the key id is the SHA-256 of the public key's SubjectPublicKeyInfo DER, minus its last two
  bytes, base32-encoded and split into groups of four with ``:`` (KeyPairUtil.computeKeyId);
* a JWK carries ``kty: RSA``, ``use: sig``, ``kid``, ``e``, ``n``, and ``concreteType``
  ``org.sagebionetworks.repo.model.oauth.JsonWebKeyRSA`` (JsonWebKeyRSA.json,
  JsonWebKey.json); ``e`` and ``n`` are Java ``BigInteger.toByteArray()`` in base64url
  without padding, so ``n`` keeps the leading zero byte of the two's-complement form
  (KeyPairUtil.bigIntToBase64URLEncoded). Standard JWK readers accept that.
* parsing first reads the token unsigned: not three dot-separated parts, or undecodable, is an
  ``IllegalArgumentException``; an expired token is ``OAuthUnauthenticatedException
  invalid_token "The token has expired."``; then the ``kid`` must name a key in the set and the
  signature must verify, else ``IllegalArgumentException`` (JSONWebTokenHelper.parseJWT).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .errors import IllegalArgument, OAuthUnauthenticated

JWK_RSA_TYPE = "org.sagebionetworks.repo.model.oauth.JsonWebKeyRSA"


def _java_bigint_b64url(value: int) -> str:
    """Base64url (no padding) of ``BigInteger.toByteArray()``: big-endian two's complement."""
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def compute_key_id(public_key: rsa.RSAPublicKey) -> str:
    """Synapse's key id: base32(SHA-256(SPKI DER)[:-2]) in groups of four joined by ``:``."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:-2]).decode("ascii")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class SigningKey:
    """An RSA-2048 key pair generated at start-up (or passed in, so tests can share one)."""

    def __init__(self, private_key: rsa.RSAPrivateKey | None = None) -> None:
        self.private_key = private_key or rsa.generate_private_key(
            public_exponent=65537, key_size=2048
        )
        self.public_key = self.private_key.public_key()
        self.kid = compute_key_id(self.public_key)

    def jwks(self) -> dict[str, Any]:
        """The ``JsonWebKeySet`` served at ``/auth/v1/oauth2/jwks``."""
        numbers = self.public_key.public_numbers()
        return {
            "keys": [
                {
                    "concreteType": JWK_RSA_TYPE,
                    "kid": self.kid,
                    "kty": "RSA",
                    "use": "sig",
                    "e": _java_bigint_b64url(numbers.e),
                    "n": _java_bigint_b64url(numbers.n),
                }
            ]
        }

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact RS256 JWS over ``claims`` (key order kept)."""
        return jwt.encode(
            claims, self.private_key, algorithm="RS256", headers={"typ": "JWT", "kid": self.kid}
        )

    def parse(self, token: str, now: float) -> dict[str, Any]:
        """Verify a token the way JSONWebTokenHelper.parseJWT does; returns its claims.

        ``now`` is the stand-in clock's time, used for ``exp`` and ``nbf``.
        """
        pieces = token.split(".")
        if len(pieces) != 3:
            raise IllegalArgument(f"Expected three sections of the token but found {len(pieces)}")
        try:
            header = jwt.get_unverified_header(token)
            unsigned = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise IllegalArgument(str(exc)) from exc
        exp = unsigned.get("exp")
        if isinstance(exp, int | float) and now > exp:
            raise OAuthUnauthenticated("invalid_token", "The token has expired.")
        nbf = unsigned.get("nbf")
        if isinstance(nbf, int | float) and now < nbf:
            raise IllegalArgument("JWT must not be accepted before " + str(nbf))
        kid = header.get("kid")
        if kid != self.kid:
            raise IllegalArgument(
                f"Could not find token key, {kid} in the list of available public keys."
            )
        try:
            return jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                options={
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_aud": False,
                    "verify_iss": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise IllegalArgument(str(exc)) from exc
