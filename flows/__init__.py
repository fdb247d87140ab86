"""Prefect flows and the timedistill command line."""

import os

# Prefect without a server starts a temporary one on first use: on a small machine that can take
# longer than Prefect's default timeout of 20 s. Users can still override both.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
