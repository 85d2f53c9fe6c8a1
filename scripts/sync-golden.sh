#!/usr/bin/env bash
# Copies the golden fixtures from ../shared/golden (where new cases computed with the
# official PyTorch code arrive) into fixtures/golden, which the tests read: a clone of
# this repository carries everything its tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
src=../shared/golden
[ -d "$src" ] || { echo "no $src beside the repository" >&2; exit 1; }
mkdir -p fixtures/golden
cp -r "$src"/. fixtures/golden/
chmod -R u+w fixtures/golden
git status --short fixtures/golden
