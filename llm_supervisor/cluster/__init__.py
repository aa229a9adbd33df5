"""vLLM across hosts on Ray: what each host runs, the cluster's view, the head and worker nodes.
"""
