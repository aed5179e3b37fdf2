"""A short, readable name for a User-Agent string ("Chrome on Linux").

Good enough for a "your devices" page, where the user only needs to tell
their own browsers apart; the raw string is shown alongside (as a tooltip).
The tables are tried in order, so the more specific tokens come first
(Edge and Opera also say "Chrome", Chrome also says "Safari", Android also
says "Linux", an iPhone also says "Mac OS X").
"""

from __future__ import annotations

BROWSERS = [
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("HeadlessChrome/", "Headless Chrome"),
    ("Chromium/", "Chromium"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
    ("curl/", "curl"),
    ("Python-urllib/", "Python urllib"),
]

SYSTEMS = [
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("CrOS", "ChromeOS"),
    ("Macintosh", "macOS"),
    ("Mac OS X", "macOS"),
    ("Linux", "Linux"),
]


def _first_match(user_agent: str, table: list[tuple[str, str]]) -> str | None:
    for token, name in table:
        if token in user_agent:
            return name
    return None


def browser_name(user_agent: str | None) -> str:
    """ "Firefox on Windows", "Chrome on Android", "curl", "a browser on
    Linux", or "unknown browser" when there is nothing to go by."""
    if not user_agent:
        return "unknown browser"
    browser = _first_match(user_agent, BROWSERS)
    system = _first_match(user_agent, SYSTEMS)
    if browser and system:
        return f"{browser} on {system}"
    if browser:
        return browser
    if system:
        return f"a browser on {system}"
    return "unknown browser"
