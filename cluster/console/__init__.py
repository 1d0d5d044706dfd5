"""The operations console: server-rendered pages over the API's service (see pages.py)."""
