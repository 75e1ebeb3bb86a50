"""Built-in attention implementations: one module each, registered on import."""
