"""Distributed-training workloads that prove a cluster built by mlcluster really trains.

Each case is a module run with ``python -m mlcluster_workloads.<case>`` (under torchrun, srun or
alone): ``ddp``, ``fsdp``, ``jax_dp``, ``allreduce``, ``envreport``, ``versions``. ``launch``
renders the sbatch script or Kubernetes manifest that starts a case on a cluster.
"""

__version__ = "0.1.0"
