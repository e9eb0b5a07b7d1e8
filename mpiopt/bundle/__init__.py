"""Level bundle machinery: cutting-plane model, level QP / LP bounds, the master state machine and the
discrete-event simulator (driven by :mod:`mpiopt.solvers.level_bundle`)."""
