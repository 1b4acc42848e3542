#!/usr/bin/env bash
# Refreshes the vendored front-end files from the npm registry (versions pinned in package.json).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
cp package.json "$work/"
(cd "$work" && npm install --no-audit --no-fund --silent)
dest=src/tokendesk/web/static/vendor
mkdir -p "$dest"
cp "$work/node_modules/htmx.org/dist/htmx.min.js" "$dest/htmx.min.js"
cp "$work/node_modules/htmx-ext-sse/dist/sse.min.js" "$dest/htmx-ext-sse.min.js"
cp "$work/node_modules/chart.js/dist/chart.umd.min.js" "$dest/chart.umd.min.js"
rm -rf "$work"
echo "vendored into $dest"
