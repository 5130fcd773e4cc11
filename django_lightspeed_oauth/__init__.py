"""Connect Lightspeed merchants to a Django site over OAuth2 and keep their tokens alive."""

__version__ = "0.1.0"
