"""The HTTP API (shared/CONTRACT.md): FastAPI app, routes, schemas, errors."""
