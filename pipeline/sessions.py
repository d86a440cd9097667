"""The aiohttp sessions of a run: connection pooling and which certificates are trusted.

Every session qwen-batch opens comes from :func:`open_session`, so that the
engines, ``check`` and the provider trust the same certificates. Without
``ca_bundle`` that is aiohttp's default context, Python's
``ssl.create_default_context()``, which reads OpenSSL's default locations and so
honours the ``SSL_CERT_FILE``/``SSL_CERT_DIR`` environment variables. With
``ca_bundle`` (``--ca-bundle``) the certificates of that PEM file are trusted
instead, as with ``curl --cacert`` or requests' ``verify=``.

Proxies are chosen per endpoint by :func:`pipeline.proxies.proxy_for`, not by the
session: ``trust_env`` stays off, so nothing (not even ``~/.netrc``) is read
behind the run's back.
"""

from __future__ import annotations

import ssl

import aiohttp

from .errors import ConfigError

__all__ = ["open_session", "tls_context"]


def tls_context(ca_bundle: str | None) -> ssl.SSLContext | None:
    """A verifying TLS context trusting ``ca_bundle`` (None: aiohttp's default context).

    An unreadable or invalid bundle is a ConfigError naming the file.
    """
    if ca_bundle is None:
        return None
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except FileNotFoundError:
        raise ConfigError(f"--ca-bundle {ca_bundle}: no such file") from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"--ca-bundle {ca_bundle}: not a PEM file of certificates ({exc})") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


def open_session(ca_bundle: str | None = None) -> aiohttp.ClientSession:
    """A new pooled session; concurrency is bounded by the caller, so the pool has no cap."""
    context = tls_context(ca_bundle)
    connector = aiohttp.TCPConnector(limit=0, ssl=context if context is not None else True)
    return aiohttp.ClientSession(connector=connector)
