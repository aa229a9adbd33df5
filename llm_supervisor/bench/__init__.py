"""`supervisor bench`: load against the served model.
"""
