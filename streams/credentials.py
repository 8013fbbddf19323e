"""Kafka TLS/SASL credentials for Faust, from :class:`~wearwatch.config.Settings`.

The same settings as :func:`wearwatch.transport.kafka_client_config` gives the
gateway and the tools, in Faust's form. Here and not in ``wearwatch.transport``
because ``streams`` is the only package that imports faust.
"""

from __future__ import annotations

import ssl
from typing import Any

import faust

from wearwatch.config import Settings
from wearwatch.transport import require_sasl_login

__all__ = ["faust_credentials"]


def faust_credentials(settings: Settings) -> Any:
    """The same TLS/SASL settings for Faust (``broker_credentials``), or None for PLAINTEXT."""
    proto = settings.kafka_security_protocol
    context = None
    if proto in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(purpose=ssl.Purpose.SERVER_AUTH, cafile=settings.kafka_ca_file)
    if proto.startswith("SASL"):
        require_sasl_login(settings)
        return faust.SASLCredentials(username=settings.kafka_sasl_username, password=settings.kafka_sasl_password,
                                     mechanism=settings.kafka_sasl_mechanism, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None
