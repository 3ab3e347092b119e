"""iocmng 2.7.9's ``iocmng.core`` import paths, for plugins written for it.

Each module here is a thin, documented alias over iocmng's own implementation;
its docstring says what it maps to and what differs:

- :mod:`iocmng.core.safe_eval` -- ``safe_eval(expr, names)`` over
  :func:`iocmng.declarative.expressions.compile_expression`;
- :mod:`iocmng.core.functions` -- ``get_registry()`` / ``register()`` over
  :data:`iocmng.declarative.expression_library.BUILTIN_FUNCTIONS`;
- :mod:`iocmng.core.pv_client` -- blocking ``get``/``put``/``monitor`` over
  the asynchronous clients of :mod:`iocmng.epics.pvclient`;
- :mod:`iocmng.core.runner` -- ``run_ioc()`` over ``iocmng-run``.

New code should use the plugin API of :mod:`iocmng` (``expression_functions``,
links in config.yaml) instead. Nothing is imported here, so importing one
alias does not import the others.
"""
