"""The ``iocmng`` command and the HTTP client of a running service."""
