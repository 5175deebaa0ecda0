"""Day-ahead forecasting of site load, PV generation and energy prices.

A pure core (no I/O except :mod:`control_plane.forecast.dataset` and
:mod:`control_plane.forecast.artifacts`):

* :mod:`site`, :mod:`timeline`, :mod:`solar`, :mod:`weather`, :mod:`generate`: a deterministic
  synthetic history (15-minute UTC steps, local-time calendar, pvlib clear sky);
* :mod:`features`, :mod:`network`, :mod:`train`: small torch quantile models (P10/P50/P90);
* :mod:`baselines`, :mod:`metrics`, :mod:`evaluate`: the scorecard against persistence;
* :mod:`quantiles`, :mod:`margin`: what the scheduler plans on (PV at P10, load at P90).

See ``docs/forecasting.md``.
"""
