#!/usr/bin/env bash
# Idempotent setup: system packages, the shared venv /opt/crane-venv (made
# with /usr/bin/python3 so other Unix users can run the CLIs), and crane in it.
#   CRANE_VENV=/opt/crane-venv   where the venv lives
#   CRANE_SETUP_FORCE=1          re-run pip even when nothing seems to have changed
set -euo pipefail
umask 022

REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${CRANE_VENV:-/opt/crane-venv}"
PY=/usr/bin/python3
STAMP="$VENV/.crane-setup"

say() { echo "setup: $*"; }

# ---------------------------------------------------------------- packages
PKGS=(python3-venv python3-dev supervisor procps util-linux passwd munge libmunge2 iproute2)
missing=()
for p in "${PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing packages ${missing[*]} and not root: install them first" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        say "apt-get update (no package lists yet)"
        apt-get update -q >/dev/null
    fi
    say "installing ${missing[*]}"
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; then
        say "apt-get install failed; running apt-get update first"
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi

# ---------------------------------------------------------------- venv
if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.base_prefix != "/usr")' 2>/dev/null; then
    say "creating $VENV with $PY"
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
chmod o+rx "$VENV"

# ---------------------------------------------------------------- crane
# Editable only when other users can reach the sources (the tests run the CLIs
# as other users); e.g. a clone under /root gets a regular install.
world_traversable() {
    local p="$1"
    [[ $(stat -c %A "$p") == *r?x ]] || return 1
    while [[ "$p" != / ]]; do
        [[ $(stat -c %A "$p") == *x ]] || return 1
        p="$(dirname "$p")"
    done
}
if world_traversable "$REPO"; then mode=editable; else mode=copy; fi

want="$mode $REPO $(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1)"
have="$(cat "$STAMP" 2>/dev/null || true)"
# (from / so that a crane/ in the current directory does not shadow the installed one)
installed_at="$(cd / && "$VENV/bin/python" -c 'import crane, os; print(os.path.dirname(os.path.dirname(os.path.abspath(crane.__file__))))' 2>/dev/null || true)"
if [[ $mode == editable && "$want" == "$have" && "$installed_at" == "$REPO" && -x "$VENV/bin/cranectld" && -z "${CRANE_SETUP_FORCE:-}" ]]; then
    say "crane already installed (editable) from $REPO in $VENV"
    exit 0
fi
if [[ $mode == editable ]]; then
    say "pip install -e $REPO[test] into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]"
else
    say "$REPO is not reachable by other users: regular (non-editable) install into $VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "$REPO[test]"
    # same version number: make sure the current sources replace the old copy
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$REPO"
fi
echo "$want" >"$STAMP"
say "done: $(cd / && "$VENV/bin/python" -c 'import crane; print("crane", crane.__version__, "at", crane.__file__)')"
