# The local cluster's node image: the same playbooks/bake.yml as the AMI templates, run by
# Packer's docker builder in a podman container (a `docker` shim on PATH calls podman),
# exported and imported as a podman image with systemd as its command.
# Kept free of a `required_plugins` block so that Debian's packer 1.6.6 can build it.

variable "base_image" {
  type        = string
  description = "podman image to start from (debootstrapped Debian 12 by default)."
}

variable "image_name" {
  type        = string
  description = "Name and tag of the node image to create."
}

variable "export_path" {
  type        = string
  description = "Where the container's filesystem is exported before the import."
}

variable "playbook" {
  type        = string
  description = "Absolute path of playbooks/bake.yml."
}

variable "flavor" {
  type        = string
  default     = "local"
  description = "Image flavour passed to the bake playbook as mlcluster_image_flavor."
}

source "docker" "node" {
  image       = var.base_image
  pull        = false
  export_path = var.export_path
  # podman's `run` takes the same arguments; /bin/sh keeps the container alive for Packer.
  run_command = ["-d", "-i", "-t", "--entrypoint=/bin/sh", "--", "{{.Image}}"]
}

build {
  sources = ["source.docker.node"]

  provisioner "ansible" {
    playbook_file = var.playbook
    user          = "root"
    use_sftp      = true
    extra_arguments = [
      "--extra-vars", "mlcluster_image_flavor=${var.flavor}",
      # Packer 1.6.6's SSH proxy only offers ssh-rsa host and user keys.
      "--ssh-extra-args", "-o HostKeyAlgorithms=+ssh-rsa -o PubkeyAcceptedKeyTypes=+ssh-rsa",
    ]
  }

  post-processor "shell-local" {
    inline = [
      "podman import --change 'CMD [\"/sbin/init\"]' --change 'STOPSIGNAL SIGRTMIN+3' --change 'LABEL io.mlcluster.image=node' ${var.export_path} ${var.image_name}",
    ]
  }
}
