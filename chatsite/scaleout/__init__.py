"""Throwaway scale-out engines on loopback: the server kits behind `make cluster`
and the scale-out tests (tests/scaleout/). Each kit starts its servers under a
base directory of its own, remembers their pids there, and stops only those.
Beside them, redis_client.py holds the running service's clients of a Redis
Cluster (REDIS_URL=redis+cluster://…; docs/SCALING.md).
"""
