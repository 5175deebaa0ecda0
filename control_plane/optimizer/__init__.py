"""Day-ahead fleet optimizer: typed flexibility models -> constraint tables -> model -> solve
-> check.

Sign convention (as in :mod:`control_plane.assets.model`): active power is positive when an
asset exports (PV generating, battery discharging) and negative when it imports (charging).
Horizon: :data:`~control_plane.optimizer.assets.STEPS` quarter-hours of ``DT_H`` hours.
"""
