#!/bin/sh
# The container's entry: bring the schema to this version, then run tokendesk.
#
# `tokendesk db upgrade` is safe on every start: it applies only the migrations the
# database lacks (none, usually), and on PostgreSQL instances starting together take
# turns under an advisory lock, so the second finds nothing left to do.
# With no arguments the server starts; any arguments are a tokendesk command instead
# (`docker run tokendesk doctor`), run after the same upgrade.
set -eu

tokendesk db upgrade

if [ "$#" -eq 0 ]; then
    set -- serve
fi
# exec: tokendesk becomes the container's main process and gets SIGTERM itself.
exec tokendesk "$@"
