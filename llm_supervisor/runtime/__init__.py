"""The daemon: the restart loop and its states, the engine under its guard, the engine's HTTP
client, sd_notify. The only layer that starts or signals processes.
"""
