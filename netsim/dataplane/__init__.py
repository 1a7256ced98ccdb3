"""Data plane: ports, switches, MAC tables, shapers, policies, the guest stack and the clocks.
Moves bytes and keeps counters; knows no files, topologies or brokers.
"""
