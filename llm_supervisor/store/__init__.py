"""What the supervisor remembers on disk between runs: the state file (last good arguments,
history), the calibration file, the daemon's lock; every write atomic.
"""
