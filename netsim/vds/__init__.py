"""The distributed switch (control): vDS configuration, per-host proxy switches, host agents,
multi-host runs and the bus transports (memory, MQTT).
"""
