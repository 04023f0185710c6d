#!/bin/sh
# gen.sh regenerates the Go code for the .proto files under proto/ from the
# repository root: `sh proto/gen.sh` (what `make proto` runs).
#
# protoc is Debian's protobuf-compiler 3.21.12 (its version is written into the
# generated headers, so another protoc gives a one-line diff); the two plugins
# are pinned by the tool directives in go.mod and built by `go tool -n`.
set -eu
cd "$(dirname "$0")/.."

want="libprotoc 3.21.12"
have="$(protoc --version)"
if [ "$have" != "$want" ]; then
	echo "gen.sh: want $want (apt-get install protobuf-compiler), have $have" >&2
	exit 1
fi

gen_go="$(go tool -n protoc-gen-go)"
gen_go_grpc="$(go tool -n protoc-gen-go-grpc)"

protoc \
	--plugin=protoc-gen-go="$gen_go" \
	--plugin=protoc-gen-go-grpc="$gen_go_grpc" \
	-I proto \
	--go_out=proto --go_opt=paths=source_relative \
	--go-grpc_out=proto --go-grpc_opt=paths=source_relative \
	proto/prefetch/v1/prefetch.proto
