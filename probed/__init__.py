"""probed: a realtime probe daemon for WebSocket and voice services."""

__version__ = "0.1.0"
