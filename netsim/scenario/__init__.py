"""Scenarios (control): the scenario model, the runner that replays it on a lab, and the pytest
plugin.
"""
