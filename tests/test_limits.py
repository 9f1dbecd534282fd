"""The tunables come from one list: `BridgeLimits` fields are `ChatBridgeApp` traitlets."""

from __future__ import annotations

from dataclasses import fields

from traitlets.config import Config

from jupyter_chatbridge import ChatBridgeApp
from jupyter_chatbridge.server.limits import BridgeLimits, limits_from


def test_every_limit_is_a_configurable_traitlet_with_its_default_and_help() -> None:
    traits = ChatBridgeApp.class_traits(config=True)
    for limit in fields(BridgeLimits):
        trait = traits[limit.name]
        assert trait.default_value == limit.default, limit.name
        type_name = getattr(limit.type, "__name__", limit.type)  # a string under annotations
        assert type(trait.default_value).__name__ == type_name, limit.name
        assert trait.help == limit.metadata["help"] and trait.help


def test_configured_values_reach_the_bridge_limits() -> None:
    app = ChatBridgeApp(config=Config({"ChatBridgeApp": {"max_sessions": 5, "inactive_ttl": 2.5}}))
    limits = limits_from(app)
    assert (limits.max_sessions, limits.inactive_ttl) == (5, 2.5)
    assert limits.max_watches_per_connection == BridgeLimits().max_watches_per_connection
