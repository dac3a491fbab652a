# Accelerator node AMIs (the flavours and operating systems of versions.yml's platform matrix):
# one amazon-ebs source (the official Ubuntu image, or Canonical's Ubuntu EKS image for an EKS
# worker flavour), provisioned by playbooks/bake.yml through Ansible, tagged with the
# component versions from versions.yml, and the AMI id written by the manifest post-processor
# (src/mlcluster/bakeami.py reads it back).

# Packer 1.6.6 resolves only short chains of locals, so they are kept short: the longest,
# source_ami_name -> base -> platform -> versions, is evaluated by tests/bake/test_packer.py.
locals {
  versions = yamldecode(file("${abspath(path.root)}/../../versions.yml")).mlcluster_versions

  # The platform matrix of versions.yml decides where a flavour is baked: a flavour it does
  # not bake as an AMI, or an OS the flavour is not built on, has no platform, and the lookup
  # below fails naming the pair.
  platform = {
    for flavor, platform in local.versions.platforms : flavor => platform.os if platform.target == "ami"
  }[var.flavor]

  # Base images: the newest official image of each operating system.
  base = {
    "ubuntu22.04" = {
      name        = "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-*"
      owner       = "099720109477"
      ssh_user    = "ubuntu"
      root_device = "/dev/sda1"
    }
    "ubuntu24.04" = {
      name        = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
      owner       = "099720109477"
      ssh_user    = "ubuntu"
      root_device = "/dev/sda1"
    }
  }[contains(local.platform, var.os) ? var.os : "${var.os} (not a platform of the ${var.flavor} flavour in versions.yml)"]

  # A flavour with eks_node is an EKS worker image: it starts from Canonical's Ubuntu EKS image
  # of the Kubernetes version versions.yml validates against (the same OS, with the kubelet and
  # /etc/eks/bootstrap.sh that role eks_node joins with).
  eks_node        = contains(local.versions.flavors[var.flavor], "eks_node")
  kubernetes      = local.versions.eks.kubernetes
  source_ami_name = local.eks_node ? replace(local.base.name, "ubuntu/images/", "ubuntu-eks/k8s_${local.kubernetes}/images/") : local.base.name

  # One tag per component of the flavour, with the version versions.yml pins it to (and, on an
  # EKS image, the Kubernetes version it was baked for).
  component_tags = merge(
    {
      for name, component in local.versions.components :
      "mlcluster:${name}" => "${try(component.version, component.sdk, component.enroot, component.nvidia_container_toolkit)}"
      if contains(local.versions.flavors[var.flavor], name)
    },
    {
      for name in ["kubernetes"] : "mlcluster:${name}" => local.versions.eks[name] if local.eks_node
    },
  )
  name_tags = {
    "Name"             = "${var.ami_name_prefix}-${var.flavor}-${var.os}"
    "mlcluster:flavor" = var.flavor
    "mlcluster:os"     = var.os
  }
  timestamp = formatdate("YYYYMMDD-hhmmss", timestamp())
}

source "amazon-ebs" "node" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id == "" ? null : var.subnet_id
  ami_name      = "${var.ami_name_prefix}-${var.flavor}-${var.os}-${local.timestamp}"
  ena_support   = true

  source_ami_filter {
    filters = {
      name                = local.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [local.base.owner]
    most_recent = true
  }

  ssh_username = local.base.ssh_user

  launch_block_device_mappings {
    device_name = local.base.root_device
    volume_size = var.volume_size
    volume_type = "gp3"
    # gp3's baseline, stated: Packer 1.6.6 rejects a gp3 volume without them.
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }

  tags          = merge(local.component_tags, local.name_tags)
  snapshot_tags = merge(local.component_tags, local.name_tags)
  run_tags      = merge(local.component_tags, local.name_tags, { "Name" = "packer-${var.ami_name_prefix}-${var.flavor}-${var.os}" })
}

build {
  sources = ["source.amazon-ebs.node"]

  provisioner "ansible" {
    playbook_file = "${abspath(path.root)}/../../playbooks/bake.yml"
    user          = local.base.ssh_user
    # Connect straight to the instance: Packer's SSH proxy offers only ssh-rsa (1.6.6) and adds
    # nothing on EC2.
    use_proxy = false
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${abspath(path.root)}/../../ansible.cfg",
      "ANSIBLE_ROLES_PATH=${abspath(path.root)}/../../roles",
      "ANSIBLE_COLLECTIONS_PATH=${abspath(path.root)}/../../collections",
    ]
    extra_arguments = concat(
      [
        "--extra-vars", "mlcluster_image_flavor=${var.flavor}",
        "--extra-vars", "mlcluster_mirror_base=${var.mirror_base}",
        "--extra-vars", "mlcluster_manifest_fetch_dir=${abspath(dirname(var.manifest_path))}",
      ],
      var.ansible_extra_arguments,
    )
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      flavor = var.flavor
      os     = var.os
    }
  }
}
