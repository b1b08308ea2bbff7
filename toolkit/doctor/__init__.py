"""``toolkit doctor``: the tuning recipe's first checks (initial loss, overfit a sample, lr) on a configured model.

``checks`` holds the steps, ``report`` the outputs, ``cli`` the command.
"""
