"""HTTP: the daemon's REST API (status, metrics, admin actions) and its client.
"""
