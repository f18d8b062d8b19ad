"""HTTP API (FastAPI). The app factory is ``api.main.create_app``."""
