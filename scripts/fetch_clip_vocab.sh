#!/usr/bin/env bash
# Fetches the released CLIP BPE vocabulary (OpenAI's bpe_simple_vocab_16e6.txt.gz, 49,152 lines:
# a version line and 48,894 merges used by CLIP's tokenizer) from the open-clip-torch wheel on
# PyPI into models/clip_bpe/, where dcm embeds it so a single-file checkpoint needs no tokenizer
# folder. Developer-run; CI uses the committed file. Checks the file's SHA-256.
set -euo pipefail
cd "$(dirname "$0")/.."
version=3.3.0
want=924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip download --no-deps --quiet "open-clip-torch==$version" -d "$tmp"
unzip -p "$tmp"/open_clip_torch-"$version"-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz > "$tmp/vocab.gz"
got=$(sha256sum "$tmp/vocab.gz" | cut -d' ' -f1)
[ "$got" = "$want" ] || { echo "bpe_simple_vocab_16e6.txt.gz: sha256 $got, expected $want" >&2; exit 1; }
mkdir -p models/clip_bpe
mv "$tmp/vocab.gz" models/clip_bpe/bpe_simple_vocab_16e6.txt.gz
echo "models/clip_bpe/bpe_simple_vocab_16e6.txt.gz ($got)"
