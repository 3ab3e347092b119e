"""The REST API (SPEC §6): app factory, routes, request models, problem+json."""
