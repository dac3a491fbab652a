# Which flavour is baked on which operating system is versions.yml's platform matrix
# (`platforms`), read by node.pkr.hcl (local.platform): a variable's validation may only look at
# the variable itself, so these two are checked there.
variable "flavor" {
  type        = string
  description = "Image flavour: one whose platforms.<flavor>.target is ami in versions.yml (gpu, neuron, cpu, eks)."
}

variable "os" {
  type        = string
  default     = "ubuntu22.04"
  description = "Base operating system: one of platforms.<flavor>.os in versions.yml (ubuntu22.04, ubuntu24.04)."
}

variable "region" {
  type        = string
  default     = "us-east-1"
  description = "AWS region the image is built and registered in."
}

variable "instance_type" {
  type = string
  # Nothing in the bake needs an accelerator (device steps wait for the configure phase), so a
  # CPU instance with enough cores for DKMS builds bakes every flavour.
  default     = "c6i.4xlarge"
  description = "Instance type of the build instance."
}

variable "volume_size" {
  type        = number
  default     = 100
  description = "Root volume size in GiB (CUDA, NCCL and the driver need about 30)."
}

variable "subnet_id" {
  type        = string
  default     = ""
  description = "Subnet of the build instance; empty for the default VPC."
}

variable "ami_name_prefix" {
  type        = string
  default     = "mlcluster"
  description = "First part of the AMI name: <prefix>-<flavor>-<os>-<timestamp>."
}

variable "manifest_path" {
  type        = string
  default     = "packer-manifest.json"
  description = "Where the manifest post-processor writes the build's artifacts (the AMI id)."
}

variable "mirror_base" {
  type        = string
  default     = ""
  description = "mlcluster_mirror_base for air-gapped builds: every download and repository comes from <mirror_base>/<source>."
}

variable "ansible_extra_arguments" {
  type        = list(string)
  default     = []
  description = "Further ansible-playbook arguments (for example [\"-e\", \"efa_mpi=openmpi5\"])."
}
