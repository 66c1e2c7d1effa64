"""Credentials never reach a message, a log or the database: the secrets of URLs are cut out of any text.

Bottom layer: the manifest reader, storage and the image checks all quote cells that may hold URLs.
"""

from __future__ import annotations

import re

INLINE_SOURCE = "<inline>"  # the source of a manifest given as text (pasted into the Prefect UI): no location


def redact_url(url: str) -> str:
    """The URL without user:password@ (credentials must never reach logs, errors or the database)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}://{authority}{slash}{path}"


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#]*@")
_QUERY = re.compile(r"(?P<url>[A-Za-z][A-Za-z0-9+.-]*://[^\s?#]*)[?#]\S*")


def redact_secrets(text: str) -> str:
    """``text`` with every URL's user name, password and query string (a signature) replaced by ``***``: for any
    cell a message quotes or the database keeps, wherever in the cell the URL is."""
    if "://" not in text:
        return text
    return _QUERY.sub(r"\g<url>?***", _USERINFO.sub(r"\g<scheme>***@", text))


def redact_text(text: str, url: str) -> str:
    """``text`` (an error message, say) with the credentials of ``url`` cut out wherever they appear."""
    _, sep, rest = url.partition("://")
    authority = rest.partition("/")[0]
    if sep and "@" in authority:
        secret = authority.rsplit("@", 1)[0]
        for piece in {secret, *secret.split(":")}:
            if piece:
                text = text.replace(piece, "***")
    return text
