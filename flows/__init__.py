"""Prefect flows and the timedistill command line."""
