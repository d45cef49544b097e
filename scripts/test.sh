#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, and every test (the privileged
# end-to-end ones included, which need root). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/install-deps.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "warning: not root; the eBPF and lab tests need root and will fail or skip" >&2
fi

# CI builds from a clean clone once: incremental compilation state would only cost disk.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> terraform fmt -check"
"${TERRAFORM_VENV:-$HOME/.cache/clustermesh/terraform}/bin/terraform" fmt -check -recursive -diff terraform/

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The end-to-end tests run the daemons' binaries (target/debug/clustermesh-agent, …), which
# `cargo test` alone does not build for packages without integration tests.
echo "==> cargo build"
cargo build --workspace --locked

echo "==> cargo test"
cargo test --workspace --locked
