"""Shared pytest setup. Part-specific fixtures live in each part's own conftest.py."""
