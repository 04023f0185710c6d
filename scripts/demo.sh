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

# The addresses in effect, for the hints below: the service defaults, then
# PREFETCHD_LISTEN and PREFETCHD_ADMIN_LISTEN, then the flags (the last of
# each wins, as in prefetchd; "--" ends the flags).
# The threshold and the model are told the same way, for the banner.
listen=${PREFETCHD_LISTEN:-127.0.0.1:50051}
admin=${PREFETCHD_ADMIN_LISTEN:-127.0.0.1:8081}
threshold="0.2 (the service default is 0.5) so that warming shows at once"
model="bundled model"
[ -n "${PREFETCHD_MODEL:-}" ] && model="model $PREFETCHD_MODEL"
[ -n "${PREFETCHD_MODEL_REPO:-}" ] && model="model repository $PREFETCHD_MODEL_REPO"
want=
for arg in "$@"; do
	case $want in
	listen) listen=$arg; want=; continue ;;
	admin) admin=$arg; want=; continue ;;
	threshold) threshold=$arg; want=; continue ;;
	model) model="model $arg"; want=; continue ;;
	repo) model="model repository $arg"; want=; continue ;;
	esac
	case $arg in
	--) break ;;
	--listen=* | -listen=*) listen=${arg#*=} ;;
	--admin-listen=* | -admin-listen=*) admin=${arg#*=} ;;
	--threshold=* | -threshold=*) threshold=${arg#*=} ;;
	--model=* | -model=*) model="model ${arg#*=}" ;;
	--model-repo=* | -model-repo=*) model="model repository ${arg#*=}" ;;
	--listen | -listen) want=listen ;;
	--admin-listen | -admin-listen) want=admin ;;
	--threshold | -threshold) want=threshold ;;
	--model | -model) want=model ;;
	--model-repo | -model-repo) want=repo ;;
	esac
done

# reachable turns a listen address into one to connect to: an empty or
# wildcard host (":6000", "0.0.0.0:6000", "[::]:6000") becomes loopback.
reachable() {
	case $1 in
	:*) echo "127.0.0.1$1" ;;
	0.0.0.0:*) echo "127.0.0.1:${1#0.0.0.0:}" ;;
	\[::\]:*) echo "[::1]:${1#\[::\]:}" ;;
	*) echo "$1" ;;
	esac
}
grpc=$(reachable "$listen")
http=$(reachable "$admin")

cat <<MSG
prefetchd demo: embedded Kafka and Redis, $model, NASA July 1995 replay,
--threshold $threshold.
In another terminal:
  go run ./cmd/prefetchctl --addr $grpc watch --any
  go run ./cmd/prefetchctl --addr $grpc --token-file $token model status
  curl -s $http/readyz
MSG
# Flags given to make run (ARGS) come last and win.
"$bin" --threshold 0.2 --admin-token-file "$token" "$@"
