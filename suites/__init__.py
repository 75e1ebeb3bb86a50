"""Built-in suites (TOML files); this package only makes them installable."""
