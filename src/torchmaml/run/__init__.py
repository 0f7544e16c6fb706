"""The runtime shared by supervised and RL training: safe files, the run lock, stop signals, the metrics log.

``files``: writes and reads that never follow a symbolic link (a run folder may come from someone else);
``metrics_log``: the JSONL metrics, appended and truncated safely after a crash (torn last lines);
``signals``: SIGINT/SIGTERM finish the iteration and write a stop checkpoint; ``folder``: a new run's folder
(refusing to train over an existing run unless asked to replace it). The lock is ``torchmaml.runlock``.
"""
