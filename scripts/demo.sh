#!/bin/sh
# demo.sh runs prefetchd the way `make run` does: on embedded defaults, with
# a lower threshold so that warming shows from the first seconds, and with a
# fresh admin token so that `prefetchctl model ...` works. It prints how to
# reach the service, then runs it in the foreground (Ctrl-C stops it and
# removes the token).
#
#   scripts/demo.sh bin/prefetchd [prefetchd flags...]
set -eu

bin=$1
shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/prefetchd-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
token="$dir/admin-token"
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$token"
chmod 600 "$token"

cat <<MSG
prefetchd demo: embedded Kafka and Redis, bundled model, NASA July 1995 replay,
--threshold 0.2 (the service default is 0.5) so that warming shows at once.
In another terminal:
  go run ./cmd/prefetchctl --addr 127.0.0.1:50051 watch --any
  go run ./cmd/prefetchctl --addr 127.0.0.1:50051 --token-file $token model status
  curl -s 127.0.0.1:8081/readyz
MSG
# Flags given to make run (ARGS) come last and win.
"$bin" --threshold 0.2 --admin-token-file "$token" "$@"
