"""Proxy URLs: checked up front, taken from the environment like requests does, never shown whole.

* :func:`check_proxy` validates a proxy URL (``http``/``https`` scheme, a host, a
  valid port) and raises :class:`~pipeline.errors.ConfigError` with the password
  masked, so a typo never echoes a secret.
* :func:`proxy_for` is the proxy a request to a URL goes through: the explicit one
  (``--proxy``) when given, else ``HTTPS_PROXY``/``HTTP_PROXY`` (either case; the
  lowercase one wins) for the URL's scheme, or ``ALL_PROXY``, unless ``NO_PROXY``
  names the host (as requests reads it: comma-separated entries; ``*`` is every
  host; ``example.com`` or ``.example.com`` is that host and its subdomains; an IP
  address or a CIDR block such as ``10.0.0.0/8`` matches addresses; a port in an
  entry is ignored).
* :func:`secret_spellings` lists every form a secret may take in text that leaves
  the process (see :func:`pipeline.http_errors.make_redactor`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import urllib.request
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from yarl import URL

from .errors import ConfigError

__all__ = ["check_proxy", "mask_proxy", "proxy_for", "proxy_password", "secret_spellings"]

PROXY_SCHEMES = ("http", "https")


def mask_proxy(value: str) -> str:
    """``value`` with the password of its user info replaced by ``***`` (parsed leniently)."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    if "@" in authority:
        userinfo, host = authority.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:***@{host}" if colon else f"{user}@{host}"
    return f"{scheme}{sep}{authority}{rest[end:]}"


def check_proxy(value: str, *, source: str = "--proxy") -> str:
    """``value`` if it is a usable proxy URL, else ConfigError naming ``source`` (password masked)."""
    shown = mask_proxy(value.strip())

    def bad(why: str) -> ConfigError:
        return ConfigError(f"{source} {shown!r} is not a proxy URL: {why} "
                           "(expected http://[user:password@]host:port)")

    text = value.strip()
    if "://" not in text:
        raise bad("no scheme")
    parts = urlsplit(text)
    if parts.scheme.lower() not in PROXY_SCHEMES:
        raise bad(f"the scheme must be http or https, not {parts.scheme!r}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if not host:
        raise bad("no host")
    if port == 0:
        raise bad("the port must be a number from 1 to 65535")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise bad("a proxy URL has no path, query or fragment")
    try:
        URL(text)
    except ValueError as exc:  # yarl is stricter than urlsplit on hosts
        raise bad(str(exc).replace(text, shown)) from None
    if any(c.isspace() for c in text):
        raise bad("it contains white space")
    return text


def proxy_password(proxy: str | None) -> str | None:
    """The password of ``proxy`` as written in the URL (percent escapes kept), if any."""
    if not proxy:
        return None
    userinfo = urlsplit(proxy).netloc.rpartition("@")[0]
    _, colon, password = userinfo.partition(":")
    return password if colon and password else None


def proxy_for(url: str, explicit: str | None = None) -> tuple[str | None, str]:
    """The proxy for requests to ``url`` and where it came from (an option or a variable).

    ``explicit`` (``--proxy``) wins over the environment and over ``NO_PROXY``, as in
    requests and httpx. A malformed proxy variable is a ConfigError naming it.
    """
    if explicit:
        return explicit, "--proxy"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    env = urllib.request.getproxies_environment()
    if parts.hostname and bypasses_proxy(parts.hostname, env.get("no", "")):
        return None, "NO_PROXY"
    for key in (scheme, "all"):
        value = env.get(key)
        if value:
            name = f"{key.upper()}_PROXY"
            return check_proxy(value, source=f"the environment variable {name}"), name
    return None, ""


def bypasses_proxy(host: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY``'s value ``no_proxy`` exempts ``host`` (see the module docstring)."""
    host = host.lower().strip("[]").rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if entry.startswith("[") and "]" in entry:  # [::1]:8080
            entry = entry[1:entry.index("]")]
        elif entry.count(":") == 1:  # host:port; the port does not matter
            entry = entry.partition(":")[0]
        entry = entry.lstrip(".").rstrip(".")
        if not entry:
            continue
        if address is not None:
            with contextlib.suppress(ValueError):  # a host name entry never matches an address
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            continue
        if host == entry or host.endswith("." + entry):
            return True
    return False


def secret_spellings(secret: str) -> set[str]:
    """``secret`` as given, percent-decoded, percent-encoded, and as yarl writes it in a URL."""
    decoded = unquote(secret)
    forms = {secret, decoded, unquote_plus(secret), quote(decoded, safe=""),
             quote(decoded, safe="~"), quote(secret, safe="")}
    for candidate in (secret, quote(decoded, safe="")):
        try:
            url = URL(f"http://user:{candidate}@host")
        except ValueError:
            continue
        forms.update(f for f in (url.raw_password, url.password) if f)
    with contextlib.suppress(ValueError):  # a password yarl cannot build has no URL form
        forms.add(URL.build(scheme="http", host="host", user="user",
                            password=decoded).raw_password or "")
    return {f for f in forms if f}
