"""The Python client (no jupyter_server import)."""
