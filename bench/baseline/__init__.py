"""Naive broadcast baseline for bench/broadcast_bench.py (not used by the service).

One Channels group per project on channels_redis's core RedisChannelLayer; the
sender calls ``group_send`` once per message; every consumer encodes the
message itself and sends it as its own frame (no batching, no shared encoding).
"""
