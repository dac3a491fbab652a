# Plugins the AMI templates need (Packer >= 1.7). Install them once with
#   packer init packer/plugins.pkr.hcl
# and build with `packer build packer/ami`: Packer finds installed plugins without this block.
# It lives apart from packer/ami/ because Debian's packer 1.6.6 cannot parse `required_plugins`;
# everything in packer/ami/ still validates with it.
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "~> 1.1"
    }
  }
}
