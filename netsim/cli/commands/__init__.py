"""CLI adapters of the network half. Each module offers `register(app)` adding its commands."""
