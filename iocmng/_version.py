"""The version of iocmng (one place; the root package, the API and the service read it)."""

__version__ = "3.0.0.dev0"
