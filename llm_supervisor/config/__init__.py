"""What the user gives the supervisor: the profile schema (and its cluster section), loading
profiles from YAML with `--set` overrides, and the LLM_SUPERVISOR_* settings. No I/O beyond reading
those files; imports nothing of the package but `errors`.
"""
