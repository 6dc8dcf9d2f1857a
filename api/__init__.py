"""The property manager's REST API and live dashboard (FastAPI)."""
