"""Layer 4: markets. Typed market actions, their calendar rules, and the policy gate every
action passes before it may leave (``control_plane.markets.policy``)."""
