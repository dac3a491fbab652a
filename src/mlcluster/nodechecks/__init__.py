"""The node checks (testinfra) that `mlcluster validate` runs against any inventory.

They ship inside the package, so `mlcluster validate` works from an installed wheel as well as
from a checkout.
"""
