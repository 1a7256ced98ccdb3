"""Watching a lab while it runs: dropped-frame capture, the frame tracer, live capture streams,
the Wireshark extcap adapter and the HTTP/WebSocket server with its page.

The layer sits above `scenario` and below `cli` (DESIGN.md §1): it reads the data plane through
the hooks the data plane offers (port taps, `PortCounters.on_drop`) and never changes how a
frame is switched.
"""
