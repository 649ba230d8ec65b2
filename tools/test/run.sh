#!/usr/bin/env bash
# The project's test command: starts the PostgreSQL server the queue tests need (installing
# it when missing), then runs every test of the workspace. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/../.."
SKYREELS_TEST_POSTGRES="$(tools/test/postgres.sh)"
export SKYREELS_TEST_POSTGRES
cargo test --workspace --locked "$@"
