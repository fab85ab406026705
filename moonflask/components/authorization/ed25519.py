"""Ed25519 signatures (RFC 8032, section 5.1), verification only, in pure
Python, for the JWTs Moonraker 0.11 issued before a switch to moonflask:
Moonraker signs them with ``alg: EdDSA`` and each user's Ed25519 key, whose
32-byte seed is the user's ``jwt_secret`` (hex).  moonflask's own tokens are
HS256 (see ``authorization``); this module only lets the tokens a front end
got from Moonraker keep working.  Written from the RFC's equations; points
in extended twisted-Edwards coordinates ``(X, Y, Z, T)``.

A verification costs a few milliseconds: callers cache the result.
"""
from __future__ import annotations

import hashlib

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)
_Point = tuple[int, int, int, int]


def _add(p: _Point, q: _Point) -> _Point:
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * t1 * t2 * _D % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % P, g * h % P, f * g % P, e * h % P


def _mul(scalar: int, p: _Point) -> _Point:
    out: _Point = (0, 1, 1, 0)
    while scalar:
        if scalar & 1:
            out = _add(out, p)
        p = _add(p, p)
        scalar >>= 1
    return out


def _x_from_y(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * _SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


def _decode(data: bytes) -> _Point | None:
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _x_from_y(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


def _encode(p: _Point) -> bytes:
    x, y, z, _ = p
    zi = pow(z, P - 2, P)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


_GY = 4 * pow(5, P - 2, P) % P
_GX = _x_from_y(_GY, 0) or 0
_G: _Point = (_GX, _GY, 1, _GX * _GY % P)


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of the private key ``seed`` (32 bytes)."""
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a = (a & ((1 << 254) - 8)) | (1 << 254)
    return _encode(_mul(a, _G))


def verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` (64 bytes) is ``public``'s signature of
    ``message``; False for any malformed input."""
    if len(public) != 32 or len(signature) != 64:
        return False
    a = _decode(public)
    r = _decode(signature[:32])
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(),
                       "little") % L
    left = _mul(s, _G)
    right = _add(r, _mul(k, a))
    return ((left[0] * right[2] - right[0] * left[2]) % P == 0
            and (left[1] * right[2] - right[1] * left[2]) % P == 0)


_VERIFIED: dict[str, dict] = {}     # token -> its claims (signature checked)
_MAX_CACHED = 256


def decode_moonraker_jwt(token: str, seed_hex: str, audience: str) -> dict:
    """The claims of a JWT Moonraker 0.11 signed (``alg: EdDSA``) with the
    key whose seed is ``seed_hex`` (the user's ``jwt_secret``).

    Returns: the payload (``username``, ``token_type``, ``exp``, ...).
    Raises: ValueError (with the reason) for a malformed token, a bad
        signature, a wrong audience, a missing claim or an expired token.
    """
    import base64
    import json
    import time

    def b64(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    claims = _VERIFIED.get(token)
    if claims is None:
        try:
            head, body, sig = token.split(".")
            header, claims = json.loads(b64(head)), json.loads(b64(body))
            key = public_key(bytes.fromhex(seed_hex))
            good = header.get("alg") == "EdDSA" and verify(key, f"{head}.{body}".encode(),
                                                             b64(sig))
        except (ValueError, TypeError, AttributeError):
            raise ValueError("malformed token") from None
        if not good or not isinstance(claims, dict):
            raise ValueError("signature verification failed")
        if len(_VERIFIED) >= _MAX_CACHED:
            _VERIFIED.clear()
        _VERIFIED[token] = claims
    for name in ("exp", "iat", "username", "token_type"):
        if name not in claims:
            raise ValueError(f'token is missing the "{name}" claim')
    if claims.get("aud") != audience:
        raise ValueError("invalid audience")
    if not isinstance(claims["exp"], (int, float)) or claims["exp"] < time.time():
        raise ValueError("expired")
    return claims
