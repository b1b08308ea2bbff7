"""``toolkit search``: staged hyperparameter search on Optuna whose trials are ablation-runner runs.

``spec`` reads search specs (torch-free), ``optuna_study`` keeps the Optuna study, ``run`` runs the stages through the
ablation runner, ``output`` writes the table, plots and best config, ``cli`` is the command.
"""
