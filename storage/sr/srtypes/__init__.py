"""SR types: one module per type, each registering an `SRDriver` with `@register_sr_type`.

`storage.sr.sr.driver_class("x")` imports `storage.sr.srtypes.x` on first use, so adding a type is
adding a module here.
"""
