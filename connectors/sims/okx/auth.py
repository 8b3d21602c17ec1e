"""OKX's check of a private REST request, as the simulator makes it: the four OK-ACCESS
headers present, the timestamp within 30 seconds of the venue's clock, then the key, the
passphrase and the signature, each refused with OKX's code and message (HTTP 401).

``OK-ACCESS-SIGN`` = base64(HMAC-SHA256(secret, timestamp + METHOD + path with its query
+ body)), the timestamp in ISO 8601 with milliseconds. A simulator given no credentials
still wants every header and a timely timestamp, but cannot check the key, the passphrase
or the signature: it does not know the secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime

from connectors.sims.okx.ws import CLOCK_SKEW_S, Credentials

# what anyone may ask without signing; every other /api/v5 path is private
PUBLIC = ("public/", "market/")

Refused = tuple[str, str]  # OKX's (code, message)


def is_private(path: str) -> bool:
    return not path.startswith(PUBLIC)


def sign(secret: str, timestamp: str, method: str, path_qs: str, body: str) -> str:
    text = timestamp + method.upper() + path_qs + body
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()).decode()


def _seconds(timestamp: str) -> float | None:
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def refusal(headers: Mapping[str, str], method: str, path_qs: str, body: str, known: Credentials | None,
            now: float) -> Refused | None:
    """OKX's (code, message) refusing this request, or None if it passes."""
    key, signed, ts, passphrase = (headers.get(f"OK-ACCESS-{h}", "") for h in ("KEY", "SIGN", "TIMESTAMP",
                                                                              "PASSPHRASE"))
    if not key:
        return "50103", 'Request header "OK-ACCESS-KEY" cannot be empty.'
    if not passphrase:
        return "50104", 'Request header "OK-ACCESS-PASSPHRASE" cannot be empty.'
    if not signed:
        return "50106", 'Request header "OK-ACCESS-SIGN" cannot be empty.'
    if not ts:
        return "50107", 'Request header "OK-ACCESS-TIMESTAMP" cannot be empty.'
    seconds = _seconds(ts)
    if seconds is None:
        return "50112", "Invalid OK-ACCESS-TIMESTAMP"
    if abs(now - seconds) > CLOCK_SKEW_S:
        return "50102", "Timestamp request expired"
    if known is None:
        return None
    if not hmac.compare_digest(key, known.api_key):
        return "50111", "Invalid OK-ACCESS-KEY"
    if not hmac.compare_digest(passphrase, known.passphrase):
        return "50105", 'Request header "OK-ACCESS-PASSPHRASE" incorrect.'
    if not hmac.compare_digest(signed, sign(known.secret, ts, method, path_qs, body)):
        return "50113", "Invalid Sign"
    return None
