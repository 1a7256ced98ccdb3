"""Wire: pure codecs on bytes (802.1Q frames, declarative frame specs, filters, pcap/pcapng). No
I/O of their own beyond the writer they are given, no clock but the one passed in.
"""
