"""2.7.9's import path of the plugin base class: :mod:`iocmng.plugin.base`."""

from ..plugin.base import PluginBase, PluginContext

__all__ = ["PluginBase", "PluginContext"]
