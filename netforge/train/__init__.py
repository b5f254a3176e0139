"""Training: the solver loop, update rules, lr policies, snapshots, divergence guard,
metrics and test-net evaluation."""
