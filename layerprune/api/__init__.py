"""The HTTP API (docs/contract.md): FastAPI app, routes, schemas, errors."""
