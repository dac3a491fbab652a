"""Distributed-training workloads that prove a cluster built by mlcluster really trains.

Each case is a module run with ``python -m mlcluster_workloads.<module>`` (under torchrun, srun
or alone); ``cases.CASES`` is the one list of them. ``launch`` renders the sbatch script or
Kubernetes manifest that starts a case on a cluster. Importing the package, ``cases`` or
``launch`` needs neither torch nor JAX.
"""

__version__ = "0.1.0"
