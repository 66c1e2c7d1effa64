"""The plan on a fleet of K nodes of G GPUs: ``schedule`` places jobs on GPU groups over time, ``simulation`` plans
a manifest, plays it and compares it with the naive one-job-per-prompt policy. GPU groups come from
``reelbatch.gpus`` (the orchestrator lends a machine's devices with the same allocator).
"""
