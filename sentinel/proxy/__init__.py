"""The request path: a pure-ASGI reverse proxy that forwards bytes as they arrive and notes what it saw."""
