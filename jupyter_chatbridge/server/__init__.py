"""The jupyter-server extension: `ChatBridgeApp` wires the bridge, its store and handlers.

Nothing here is imported by the Python client or the notebook UI.
"""
