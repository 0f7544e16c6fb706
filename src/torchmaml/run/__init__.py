"""The runtime shared by every species of training (supervised, meta-RL), one job per module.

``trainer``: ``Trainer(step, state, hooks)``, the loop of one phase (checkpoints, resume, metrics log, signals,
write errors); ``hooks``: its bookkeeping (divergence guard, monitors, validation, time limit, TensorBoard,
progress bar); ``phases``: a run folder's life (create or continue it, train its phases, plot);
``config_io``: config files, presets with ``base``, ``--set`` overrides, validation; ``files``: writes and
reads that never follow a symbolic link (a run folder may come from someone else); ``metrics_log``: the JSONL
metrics, appended and truncated safely after a crash (torn last lines); ``signals``: SIGINT/SIGTERM finish
the iteration and write a stop checkpoint; ``folder``: a new run's folder (refusing to train over an existing
run unless asked to replace it); ``resume``: what a resume finds; ``seeds``: every derived seed. The lock is
``torchmaml.runlock``; the species and their modules are ``torchmaml.species``.
"""
