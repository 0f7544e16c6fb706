"""The theory lab: the experiments behind ``docs/theory.md``, run as ``python -m experiments.theory_lab`` from the
repository root. Not part of the ``torchmaml`` package; it uses the public ``torchmaml.theory`` measurements.

- ``setups``: the two task families (linear regression, sinusoid) and every experiment's sizes;
- ``constants``: estimated constants against closed forms, and along a meta-training run;
- ``bias_variance`` (with ``control_variate`` and ``estimators``): bias and moments of the meta-gradient
  estimators against ``D_in``, ``D_o``, ``D_h``, ``B``, next to the bounds;
- ``complexity``: iterations to an epsilon-stationary point with the theory-guided step size, next to ``T``;
- ``run``, ``figures``, ``docs``, ``commands``: JSON and PNG outputs, the Markdown page, the command line.
"""
