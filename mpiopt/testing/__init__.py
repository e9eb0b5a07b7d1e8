"""Test and benchmark helpers that ship with mpiopt (no solver code).

``mpiopt.testing.cluster``: an emulated cluster on one Linux machine (network namespaces, a bridge,
shaped veth links) for running mpiopt across "nodes" under MPICH or Open MPI. Needs root.
"""
