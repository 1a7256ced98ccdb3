"""hvsim's network half: frames, ports, switches, capture, topologies, scenarios, the vDS."""
