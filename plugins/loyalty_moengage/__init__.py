"""Loyalty platform to MoEngage integration for Apache Airflow.

Importing this package is cheap on purpose: DAG files import it at parse time, so nothing
here touches a database, the network or pandas.
"""

__version__ = "0.1.0"
