"""The "MoEngage sync" tabs of the Airflow UI (plugin ``external_views``), served by the plugin's
FastAPI app on Airflow's API server: ``data.py`` reads, ``pages.py`` renders, ``app.py`` routes
and checks access through Airflow's auth manager."""
