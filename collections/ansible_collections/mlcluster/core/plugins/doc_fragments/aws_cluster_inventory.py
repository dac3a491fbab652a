"""Options shared by the mlcluster inventory plugins that read a cluster from AWS."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  region:
    description: The AWS region of the cluster.
    type: str
    env:
      - name: AWS_REGION
      - name: AWS_DEFAULT_REGION
  profile:
    description: A named profile of the shared AWS configuration.
    type: str
    env:
      - name: AWS_PROFILE
  endpoint_url:
    description:
      - Send the API calls here instead of the region's endpoint (a test server). botocore also
        reads C(AWS_ENDPOINT_URL_<SERVICE>) and C(AWS_ENDPOINT_URL) itself.
    type: str
  retry_mode:
    description:
      - botocore's retry mode for throttled and failed calls. C(adaptive) also slows the
        client down when the service throttles it.
    type: str
    default: adaptive
    choices: [standard, adaptive]
  max_attempts:
    description: Attempts per API call, the first one included.
    type: int
    default: 10
  slurm_partitions:
    description:
      - Set C(slurm_partitions) (one partition per compute group, the first one the default) as
        a variable of C(all). Group variables files still override it.
    type: bool
    default: true
"""
