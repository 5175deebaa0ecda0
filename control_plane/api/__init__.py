"""The REST API for SOC analysts and operators (HTTPS with mutual TLS, default deny).

``routes`` (the table and the decision) and ``inputs`` (validation) are pure;
``rest`` is the aiohttp adapter; ``operations`` reads the live control plane.
"""
