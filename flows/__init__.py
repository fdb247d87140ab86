"""Prefect flows and the timedistill command line."""

import os

# Prefect without a server starts a temporary one on first use: on a 2-core machine that takes
# 20-30 s, past Prefect's default 20 s timeout. Users can still override both.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
