"""The daemon's configuration: settings plus what is derived from them, swapped as a whole.

A reload builds a complete new `Configuration` or raises with every problem; the caller keeps the old
one on failure, so a bad env file or registry never leaves the daemon half reconfigured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog

from tinyscheduler.adapters.tinytask import ServerFeatures
from tinyscheduler.config.prices import load_prices
from tinyscheduler.config.registry import Registry, configured_registry, effective_limits
from tinyscheduler.config.settings import SETTINGS, LoadedSettings, Settings
from tinyscheduler.core.cost import PriceTable
from tinyscheduler.core.planner import PlanConfig
from tinyscheduler.core.redact import redacted
from tinyscheduler.service.gather import plan_config

log = structlog.get_logger("tinyscheduler.daemon")

#: Settings read once at start: changing them needs a restart (the lock and leases live there; the
#: HTTP listener is bound at start; the etcd lease, the host's name and its claims are those of the
#: cluster it joined).
RESTART_ONLY = (
    "base_path",
    "running_dir",
    "lock_file",
    "pass_timeout_sec",
    "http_addr",
    "etcd_endpoints",
    "host_id",
    "cluster",
    "cluster_heartbeat_sec",
    "etcd_ca_file",
    "etcd_cert_file",
    "etcd_key_file",
    "etcd_user",
    "etcd_password",
)


@dataclass(frozen=True)
class Configuration:
    loaded: LoadedSettings
    registry: Registry | None
    limits: dict[str, int]
    #: Prices of the models (TINYSCHEDULER_PRICES); empty without the setting.
    prices: PriceTable = field(default_factory=PriceTable)

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    def plan_config(self, features: ServerFeatures) -> PlanConfig:
        """What the planner is given, for a server with `features`."""
        s = self.settings
        return plan_config(
            self.limits,
            self.registry,
            features,
            disable_blocking=s.disable_blocking,
            heartbeat_sec=s.heartbeat_sec,
            max_runtime_sec=s.max_runtime_sec,
        )

    @classmethod
    def load(cls, loaded: LoadedSettings) -> Configuration:
        """Raises ConfigError (RegistryError) naming every problem."""
        registry = configured_registry(loaded)
        return cls(loaded, registry, effective_limits(registry, loaded.settings), load_prices(loaded.settings.prices))

    def reloaded(self) -> tuple[Configuration, dict[str, tuple[Any, Any]]]:
        """The configuration as the files say now, and what changed; raises ConfigError.

        Settings that only a restart may change keep their old values (each said once in the log).
        """
        fresh = Configuration.load(self._keep_restart_only(self.loaded.reload()))
        changes = changed_settings(self.settings, fresh.settings)
        if self.limits != fresh.limits:
            changes["agent limits"] = (self.limits, fresh.limits)
        return fresh, changes

    def _keep_restart_only(self, loaded: LoadedSettings) -> LoadedSettings:
        kept = {}
        for name in RESTART_ONLY:
            before, after = getattr(self.settings, name), getattr(loaded.settings, name)
            if before != after:
                log.warning(
                    "restart_needed",
                    setting=name,
                    old=str(redacted(name, before)),
                    new=str(redacted(name, after)),
                    reason="this setting cannot change while running; restart to apply it",
                )
                kept[name] = before
        return loaded.with_overrides(kept) if kept else loaded


def changed_settings(old: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    return {
        info.name: (getattr(old, info.name), getattr(new, info.name))
        for info in SETTINGS
        if getattr(old, info.name) != getattr(new, info.name)
    }
