"""The MoEngage-facing API: live points for Content APIs and a connector webhook that enrolls.

One FastAPI app (``loyalty_moengage.api.app.create_app``) is served two ways: mounted in
Airflow's API server by ``plugins/moengage_api_plugin.py`` (under ``/loyalty-moengage``), and
standalone with ``python -m loyalty_moengage.api``. Airflow applies no auth to plugin apps, so
every endpoint checks its own keys (``keys.py``).

Importing this package is cheap: FastAPI and psycopg load only with ``app``.
"""
