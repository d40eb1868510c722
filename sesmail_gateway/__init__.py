"""sesmail-gateway: a self-hosted inbound SMTP gateway."""

__version__ = "0.1.0"
