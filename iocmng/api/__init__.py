"""The REST API: app factory, shared HTTP helpers, route modules, the PV gateway, problem+json, OpenAPI."""
