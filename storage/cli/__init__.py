"""CLI adapters of the storage half. Each module offers `register(app)` adding its commands."""
