"""The parts of one generation of the service, assembled (no I/O, nothing started).

:class:`Parts` is what the service's roles share: settings, registry,
runtime and its IOC bridge, devices, validation pipeline, events, plugin
logs, autosave, and :class:`~iocmng.service.reads.Served` (this process's
generation). :class:`Start` is what a start of the process brings from files
and the environment, read by :meth:`iocmng.service.service.Service.from_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config.settings import ServiceConfig, Settings, StartupPlugin, resolve_prefix
from ..epics.devices import Devices
from ..epics.ioc import IocBridge
from ..runtime.runtime import Runtime
from .autosave import AutosaveStore
from .events import EventBus, PluginLogs
from .reads import Served
from .registry import Registry
from .validation import Options, Pipeline


@dataclass
class Start:
    """What a start of the process brings, read from files and the environment."""

    service_config: ServiceConfig
    #: Real start (not a reload): the startup, boot-list and demo plugins are registered.
    fresh_start: bool = True
    #: The supervisor saw the process die at every start: no plugin is started.
    safe_mode: bool = False
    #: IOCMNG_CONFIG ``plugins:``, the boot list, the demo plugins (a real start only).
    startup_plugins: list[StartupPlugin] = field(default_factory=list)
    boot_errors: list[str] = field(default_factory=list)


class Parts:
    """The parts of one generation, assembled from the settings and what the start brought."""

    def __init__(self, settings: Settings, start: Start) -> None:
        self.settings = settings
        self.data_dir = settings.plugins_dir
        self.prefix = resolve_prefix(settings, start.service_config)
        self.fresh_start = start.fresh_start
        self.safe_mode = start.safe_mode
        self.startup_plugins = start.startup_plugins
        self.served = Served(boot_errors=list(start.boot_errors))
        self.registry = Registry(self.data_dir)
        self.autosave = AutosaveStore(self.data_dir)
        self.bridge = IocBridge(self.prefix, acf=settings.acf)
        # ophyd devices: built in the background at boot; empty without the extra.
        self.devices = Devices(settings.beamline_config, enabled=not settings.disable_ophyd)
        self.runtime = Runtime(self.bridge, on_save=self.autosave.update, devices=self.devices)
        self.runtime.channelfinder_url = settings.channelfinder_url
        self.runtime.channelfinder_timeout = settings.channelfinder_timeout
        self.runtime.link_protocol = settings.default_link_protocol
        self.events = EventBus()
        self.runtime.listeners.append(self.events.publish)
        self.logs = PluginLogs()
        self.pipeline = Pipeline(
            Options(
                data_dir=self.data_dir,
                prefix=self.prefix,
                allow_requirements=settings.allow_requirements,
                git_timeout=settings.git_timeout,
                pip_timeout=settings.pip_timeout,
                import_timeout=settings.import_timeout,
            )
        )
