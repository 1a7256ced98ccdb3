"""Reliability harnesses shared by `tests/reliability/` (small, bounded runs in CI) and
`bench/reliability.py` (the long runs behind `hvsim bench reliability`).

- `fuzz`: every parser that takes outside input, as (hypothesis strategy, contract check) pairs;
  the only allowed outcomes are a correct result or our typed error with a clear message.
- `crashio`: a RawIO that simulates a power cut after the Nth durable step.
- `crash`: runs a VHD write, a snapshot, a coalesce and an LVM metadata update to every cut point.
- `overload`: a switch offered 10× what its egress can carry, on a manual clock.
- `isolation`: random topologies and frame sequences checked against an independent model.
"""
