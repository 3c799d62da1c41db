"""How a URL given by an API client is shown back (SPEC §13): scheme, host, port and path; userinfo, query and
fragment masked. A leaf, so the API and the delivery code show URLs the same way."""

from __future__ import annotations

import yarl

MASK = "********"


def mask_url(url: str) -> str:
    """`url` for API answers: scheme, host, port and path shown, userinfo, query and fragment masked."""
    try:
        parsed = yarl.URL(url)
        port = parsed.explicit_port
    except (TypeError, ValueError):
        return MASK
    host = parsed.raw_host
    if not parsed.absolute or not host:
        return MASK
    userinfo = f"{MASK}@" if parsed.raw_user is not None or parsed.raw_password is not None else ""
    shown = f"[{host}]" if ":" in host else host
    text = f"{parsed.scheme}://{userinfo}{shown}" + (f":{port}" if port is not None else "") + parsed.raw_path
    text += f"?{MASK}" if parsed.raw_query_string else ""
    return text + (f"#{MASK}" if parsed.raw_fragment else "")
