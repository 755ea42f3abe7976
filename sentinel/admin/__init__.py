"""The admin HTTP API on its own port: metrics, health, and (behind tokens) audit and reports."""
