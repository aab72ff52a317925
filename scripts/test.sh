#!/usr/bin/env bash
# The one test command: installs what the end-to-end tests need, then runs
# formatting, lints, and every test with the end-to-end tests required.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test (RTMP_GUARD_E2E=require)"
RTMP_GUARD_E2E=require cargo test --all-targets --no-fail-fast
# Doc tests are not in --all-targets.
RTMP_GUARD_E2E=require cargo test --doc
