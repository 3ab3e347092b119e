"""The service: its lifecycle (boot, serve, reload by re-exec, stop), the persisted
registry, the validation pipeline and its sources, the supervisor, autosave,
events and metrics."""
