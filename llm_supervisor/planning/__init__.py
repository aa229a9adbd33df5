"""The launch plan: everything `up` decides before the first launch (hardware match, placement,
the fit, the arguments, argv and environment) and what `plan` shows.
"""
