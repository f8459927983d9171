"""The API's routes, one router per idea: ``points`` (what MoEngage reads) and ``customers``
(the connector webhook that writes). Each takes what it needs from ``app.state.api``."""
