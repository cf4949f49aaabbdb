"""Tests of the actor runtime: supervision, /health, /metrics, signals, supervisord."""
