"""What stands beside the data path: operator actions (resend), the in-process runner, Airflow
listeners (run note, workspace Pool), alerts, metrics, lineage, Assets and the presence refresh."""
