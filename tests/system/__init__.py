"""System tests (a package so that ``tests/system/conftest.py`` is ``system.conftest``).

Without this file both conftests would be modules named ``conftest``, and pytest
drops the first from ``sys.modules`` when it imports the second: every
``from conftest import ...`` (the root helpers: ports, polling, the runner) would
then depend on which conftest was imported last. Test modules here import the
root helpers as ``from conftest import ...`` and this directory's helpers as
``from .conftest import ...``.
"""
