#!/usr/bin/env bash
set -euo pipefail
cd "$(dirname "$0")/.."
cargo +nightly build --release --bin hyperbatch --target target.json -Zbuild-std=core,compiler_builtins -Zbuild-std-features=compiler-builtins-mem -Zjson-target-spec "$@"
