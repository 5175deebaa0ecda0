# Limits of the market policy. Part of the policy version: changing a limit is a policy
# update, loaded only when policies/*_test.rego pass against it.
package gridfort.market

# Smallest order and increment per product [kW]; energy trades in 0.1 MW, reserves in 1 MW.
lot_min_kw := {"day_ahead": 100, "intraday": 100, "capacity": 1000, "fcr": 1000, "afrr": 1000}

lot_increment_kw := {"day_ahead": 100, "intraday": 100, "capacity": 1000, "fcr": 1000, "afrr": 1000}

# Largest single order [kW] (fat-finger guard, independent of the flexibility check).
lot_max_kw := {"day_ahead": 100000, "intraday": 50000, "capacity": 100000, "fcr": 25000, "afrr": 50000}

# Length of one product [h], for the exposure of an order.
product_duration_h := {"day_ahead": 0.25, "intraday": 0.25, "capacity": 1, "fcr": 4, "afrr": 4}

# Harmonised price limits per product [EUR/MWh] (SDAC -500..4000, SIDC -9999..9999).
price_min_eur_per_mwh := {"day_ahead": -500, "intraday": -9999, "capacity": 0, "fcr": 0, "afrr": 0}

price_max_eur_per_mwh := {"day_ahead": 4000, "intraday": 9999, "capacity": 10000, "fcr": 10000, "afrr": 10000}

# Price sanity band around the caller's reference price: the larger of a relative
# band [%] and an absolute floor [EUR/MWh].
price_band_pct := 50

price_band_floor_eur_per_mwh := 30

# Net position per product and delivery period [kW] (sell positive) and open exposure [EUR].
position_limit_kw := 200000

exposure_limit_eur := 2000000

# Orders strictly above this volume need a second operator's approval [kW].
four_eyes_threshold_kw := 10000
