"""What of a URI is a secret, decided once for every URI the tool prints, logs, stores or hands
to Ray: storage URLs, tracking URIs, and any future one.

A secret is the password of a URI's userinfo (``scheme://user:PASSWORD@host``) and the value
of any ``key=value`` pair whose key names a secret (``?password=``, ``?token=``, ``?sig=``,
libpq's ``password=...`` in a driver's message). User names, hosts, ports and paths stay
readable, so that a message still says which server it means.
"""

from __future__ import annotations

import re
from dataclasses import replace
from urllib.parse import unquote

from search.config.schema import Spec

MASK = "***"

# A URL's userinfo password: from ``://user:`` to the last ``@`` of the URL (SQLAlchemy ends
# it at the first, so a raw ``@`` in a password would otherwise leave its tail readable).
_USERINFO_SECRET = re.compile(r"(://[^:/@\s]*:)\S*@")
# ``key=value`` pairs: a URL's query string (``?password=...``) and libpq's ``password=...``.
_KEY_VALUE = re.compile(r"(?<![\w%])([\w%.~-]+)=([^&;#\s'\"]*)")
# Parts of a key's name that mark its value as a secret: password, passwd, pwd, sslpassword,
# token, access_token, api_key, secret, auth, credential, sig and signature (signed URLs:
# ``X-Amz-Signature``, Azure's ``sig``), cookie. Masking a harmless value too costs nothing.
_SECRET_KEY_PARTS = re.compile(r"pass|pwd|secret|token|key|auth|credential|sig|cookie", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """``text`` with every secret a URI can carry replaced by ``***``: the userinfo password
    and any query (or libpq ``key=value``) parameter whose name marks a secret,
    percent-encoded names included. Safe to print, log, store and hand on.

    Args:
        text: A URI, or a message, log record or file text that may hold some.

    Returns:
        The masked text; text without a secret comes back unchanged.
    """
    text = _USERINFO_SECRET.sub(rf"\1{MASK}@", text)

    def mask_value(match: re.Match[str]) -> str:
        key, value = match.group(1), match.group(2)
        return f"{key}={MASK}" if value and _SECRET_KEY_PARTS.search(unquote(key)) else match.group(0)

    return _KEY_VALUE.sub(mask_value, text)


def without_secrets(spec: Spec) -> Spec:
    """``spec`` as it may be stored and handed to Ray: its YAML text (kept in the study) and its
    tracking URIs masked. The driver keeps the real URIs in the trackers it built first."""
    tracking = spec.tracking
    masked = replace(
        tracking,
        mlflow=None if tracking.mlflow is None else mask_secrets(tracking.mlflow),
        tensorboard=None if tracking.tensorboard is None else mask_secrets(tracking.tensorboard),
    )
    return replace(spec, text=mask_secrets(spec.text), tracking=masked)
