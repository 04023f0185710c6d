#!/bin/sh
# setup.sh makes sure this machine has what `make run` and `make test` need
# beyond Go: redis-server (the Redis-backed tests start their own), for the
# race detector a C toolchain (gcc, libc6-dev), and chromium (the status
# page's browser test runs it headless). It installs what is
# missing with apt-get when it can (root, or sudo without a password) and
# otherwise stops, printing the one command to run.
#
#   scripts/setup.sh test   # what `make test` needs
#   scripts/setup.sh run    # what `make run` needs (Go only)
#   scripts/setup.sh ops    # what `make lint-ops` needs: promtool (Debian's prometheus)
set -eu

want=${1:-test}

# Go: the version go.mod names (the go command fetches a newer toolchain
# itself when GOTOOLCHAIN allows; this only checks one is on PATH).
gover=$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$(dirname "$0")/../go.mod")
if ! command -v go >/dev/null 2>&1; then
	echo "setup: go is not on PATH; install Go $gover or newer from https://go.dev/dl/" >&2
	exit 1
fi

[ "$want" = run ] && exit 0

missing=""
if [ "$want" = ops ]; then
	command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
else
	command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
	if [ "$want" = test ]; then
		command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
	fi
fi
# -race needs cgo: a C compiler that can build against the C library.
if [ "$want" = test ] && ! printf '#include <stdlib.h>\nint main(void){return 0;}\n' |
	"$(go env CC)" -x c - -o /dev/null >/dev/null 2>&1; then
	missing="$missing gcc libc6-dev"
fi
[ -z "$missing" ] && exit 0

cmd="apt-get update && apt-get install -y --no-install-recommends$missing"
if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup: missing:$missing; install them with your package manager" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo="sudo -n"
	else
		echo "setup: missing:$missing; run: sudo sh -c '$cmd'" >&2
		exit 1
	fi
fi
echo "setup: installing$missing"
# redis-server's (and prometheus') post-install would start a system daemon;
# the tests start their own servers on free ports, so tell invoke-rc.d not to.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod +x "$policy"
	trap '$sudo rm -f "$policy"' EXIT
fi
# shellcheck disable=SC2086 # $missing is a list of package names
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q
# shellcheck disable=SC2086
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
