"""The routing service: FastAPI app, settings, schemas, policy serving, experience log, CLI."""
