#!/usr/bin/env bash
# Install, upgrade or remove driftgate as a systemd service on a Debian 12 / Raspberry Pi OS
# (bookworm) gateway. Run as root from a checkout of the repository:
#
#   sudo ./deploy/install.sh                    install, or upgrade in place
#   sudo ./deploy/install.sh --wheels DIR       the same without a package index (offline)
#   sudo ./deploy/install.sh --uninstall        remove the program; keep config and state
#   sudo ./deploy/install.sh --uninstall --purge   also remove /etc/driftgate, /var/lib/driftgate
#   ./deploy/install.sh --dry-run [...]         print every step, change nothing
#
# What goes where (docs/operate.md, "Install"):
#   /opt/driftgate/venv-<version>-<time>/  the program in its own virtualenv, made with the
#                                          distribution's /usr/bin/python3
#   /opt/driftgate/venv -> venv-...        what the unit runs; switched only once the new
#                                          virtualenv runs `driftgate --version` as the service user
#   /opt/driftgate/doc/                    README, docs/, the example config of this version
#   /usr/local/bin/driftgate               -> /opt/driftgate/venv/bin/driftgate
#   /etc/driftgate/agent.yaml              the config: written from the example once, then kept
#   /var/lib/driftgate/                    the state (spool, baselines, references, incidents): kept
#   /etc/systemd/system/driftgate.service  the unit; local changes belong in a drop-in
set -euo pipefail
umask 022 # the service user must be able to read the program

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0"
  cat <<'EOF'
Options:
  --dry-run        print every step without doing it (needs no root)
  --wheels DIR     install from the wheels in DIR only (no package index): make DIR on a
                   machine with internet, same Python and architecture, with
                   python3 -m pip wheel --wheel-dir DIR ".[plot,report]" "setuptools>=77" wheel
  --extras LIST    optional features to install (default: plot,report: replay --plot and
                   report --pdf; add gpio for tower lights on Raspberry Pi pins:
                   --extras plot,report,gpio)
  --uninstall      stop and remove the service and the program; config and state stay
  --purge          with --uninstall: also remove /etc/driftgate, /var/lib/driftgate, the user
  -h, --help       this text
EOF
}

PYTHON=/usr/bin/python3
PREFIX=/opt/driftgate
CONF=/etc/driftgate
STATE=/var/lib/driftgate
UNIT=/etc/systemd/system/driftgate.service
USER_NAME=driftgate

dry_run=0 uninstall=0 purge=0 wheels="" extras="plot,report"
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    --wheels) [ $# -ge 2 ] || { echo "--wheels needs a directory" >&2; exit 2; }; wheels="$2"; shift ;;
    --wheels=*) wheels="${1#--wheels=}" ;;
    --extras) [ $# -ge 2 ] || { echo "--extras needs a list, e.g. plot,gpio" >&2; exit 2; }; extras="$2"; shift ;;
    --extras=*) extras="${1#--extras=}" ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ "$purge" -eq 1 ] && [ "$uninstall" -eq 0 ]; then
  echo "--purge goes with --uninstall" >&2; exit 2
fi
if ! [[ "$extras" =~ ^[a-z0-9,]*$ ]]; then
  echo "--extras: a comma-separated list of names, e.g. plot,gpio" >&2; exit 2
fi

step() { printf '== %s\n' "$*"; }
# Run a command, printed first (quoted as a shell would need it); in a dry run only printed.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [ "$dry_run" -eq 1 ] || "$@"
}
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

if [ "$dry_run" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
  die "run as root: sudo $0 $* (or --dry-run to see the steps)"
fi
# systemd as PID 1: not the case in a chroot or an image build, where the unit is only installed.
systemd_running() { [ -d /run/systemd/system ]; }
service_active() { systemd_running && systemctl is-active --quiet driftgate; }

# --------------------------------------------------------------------------------- uninstall
if [ "$uninstall" -eq 1 ]; then
  step "stop and remove the service"
  if systemd_running; then
    if systemctl list-unit-files driftgate.service >/dev/null 2>&1; then
      run systemctl disable --now driftgate.service
    fi
  fi
  if [ -e "$UNIT" ]; then run rm -f "$UNIT"; fi
  if [ "$purge" -eq 1 ] && [ -d "$UNIT.d" ]; then run rm -rf "$UNIT.d"; fi
  if systemd_running; then run systemctl daemon-reload; fi
  step "remove the program"
  if [ -L /usr/local/bin/driftgate ]; then run rm -f /usr/local/bin/driftgate; fi
  if [ -d "$PREFIX" ]; then run rm -rf "$PREFIX"; fi
  if [ "$purge" -eq 1 ]; then
    step "purge: remove the configuration, the state and the user"
    if [ -d "$CONF" ]; then run rm -rf "$CONF"; fi
    if [ -d "$STATE" ]; then run rm -rf "$STATE"; fi
    if getent passwd "$USER_NAME" >/dev/null; then run userdel "$USER_NAME"; fi
    if getent group "$USER_NAME" >/dev/null; then run groupdel "$USER_NAME"; fi
    echo "driftgate removed, with its configuration and state."
  else
    echo "driftgate removed. Kept: $CONF (configuration), $STATE (spool, baselines,"
    echo "references, incidents) and the user $USER_NAME; --uninstall --purge removes them."
  fi
  exit 0
fi

# ----------------------------------------------------------------------------------- install
src="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$src/pyproject.toml" ] && [ -d "$src/agent" ] || die "$src is not a driftgate checkout"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$src/pyproject.toml" | head -n 1)"
[ -n "$version" ] || die "no version in $src/pyproject.toml"

step "check Python ($PYTHON)"
[ -x "$PYTHON" ] || die "$PYTHON not found: install Debian's python3 (apt install python3 python3-venv)"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  die "driftgate needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1). Debian 12 (bookworm) and Raspberry Pi OS bookworm have 3.11."
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  die "$PYTHON cannot make a virtualenv: install it with apt install python3-venv"
fi
echo "$("$PYTHON" --version 2>&1) with venv"
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || die "--wheels $wheels: no such directory"
  wheels="$(cd "$wheels" && pwd)"
fi

was_active=0
if service_active; then was_active=1; fi
if [ -e "$PREFIX/venv" ]; then
  step "upgrade driftgate to $version (config in $CONF and state in $STATE are kept)"
else
  step "install driftgate $version"
fi

step "the service user $USER_NAME"
if getent passwd "$USER_NAME" >/dev/null; then
  echo "user $USER_NAME exists"
else
  run useradd --system --user-group --home-dir "$STATE" --no-create-home \
    --shell /usr/sbin/nologin --comment "driftgate edge agent" "$USER_NAME"
fi
# dialout: USB and RS-485 serial adapters; gpio (Raspberry Pi OS): tower lights on the pins.
for group in dialout gpio; do
  if getent group "$group" >/dev/null && ! id -nG "$USER_NAME" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
    run usermod --append --groups "$group" "$USER_NAME"
  fi
done

stamp="$(date +%Y%m%d%H%M%S)"
venv="$PREFIX/venv-$version-$stamp"
step "the program in a new virtualenv: $venv"
run install -d -m 0755 "$PREFIX"
run "$PYTHON" -m venv "$venv"
# Build from a copy: pip would otherwise leave build/ and *.egg-info in the checkout, owned by root.
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
run cp -r "$src/agent" "$src/pyproject.toml" "$src/README.md" "$build/"
run find "$build" -name __pycache__ -prune -exec rm -rf {} +
pip_args=(--quiet --disable-pip-version-check --no-cache-dir)
if [ -n "$wheels" ]; then pip_args+=(--no-index --find-links "$wheels"); fi
spec="$build"
if [ -n "$extras" ]; then spec="$build[$extras]"; fi
if ! run "$venv/bin/python" -m pip install "${pip_args[@]}" "$spec"; then
  rm -rf "$venv"
  if [ -n "$wheels" ]; then
    die "pip could not install from $wheels: it must hold every dependency, setuptools>=77 and wheel (see --help); the installed version, if any, is unchanged"
  fi
  die "pip could not install driftgate (no package index reachable? use --wheels DIR); the installed version, if any, is unchanged"
fi

step "check: driftgate --version as $USER_NAME"
if [ "$dry_run" -eq 0 ]; then
  got="$(runuser -u "$USER_NAME" -- "$venv/bin/driftgate" --version 2>&1)" || {
    rm -rf "$venv"
    die "the new program does not run as $USER_NAME: $got; the installed version, if any, is unchanged"
  }
  [ "$got" = "driftgate $version" ] || {
    rm -rf "$venv"
    die "the new program says '$got', expected 'driftgate $version'"
  }
  echo "$got"
else
  printf '+ runuser -u %s -- %s --version\n' "$USER_NAME" "$venv/bin/driftgate"
fi

previous="$(readlink "$PREFIX/venv" 2>/dev/null || true)"
step "switch $PREFIX/venv to the new virtualenv"
run ln -sfn "$(basename "$venv")" "$PREFIX/venv.new"
run mv -T "$PREFIX/venv.new" "$PREFIX/venv"
run ln -sfn "$PREFIX/venv/bin/driftgate" /usr/local/bin/driftgate
run rm -rf "$PREFIX/doc"
run install -d -m 0755 "$PREFIX/doc"
run cp -r "$src/README.md" "$src/docs" "$src/deploy/agent.example.yaml" "$PREFIX/doc/"

step "configuration in $CONF"
run install -d -m 0750 -o root -g "$USER_NAME" "$CONF"
if [ -f "$CONF/agent.yaml" ]; then
  echo "kept $CONF/agent.yaml (this version's example: $PREFIX/doc/agent.example.yaml)"
else
  run install -m 0640 -o root -g "$USER_NAME" "$src/deploy/agent.example.yaml" "$CONF/agent.yaml"
fi

step "state in $STATE"
run install -d -m 0750 -o "$USER_NAME" -g "$USER_NAME" "$STATE"

step "the systemd unit $UNIT"
run install -m 0644 "$src/systemd/driftgate.service" "$UNIT"
if systemd_running; then
  run systemctl daemon-reload
  if [ "$was_active" -eq 1 ]; then
    step "restart the running service on the new version"
    if ! run systemctl restart driftgate.service; then
      hint="see journalctl -u driftgate -n 50"
      if [ -n "$previous" ] && [ -d "$PREFIX/$previous" ]; then
        hint="$hint; back to the previous version: ln -sfn $previous $PREFIX/venv && systemctl restart driftgate"
      fi
      die "the service did not start on the new version ($hint)"
    fi
  fi
else
  echo "systemd is not running here: the unit is installed and takes effect at the next boot"
fi

step "remove earlier versions"
for old in "$PREFIX"/venv-* "$PREFIX/.venv" "$PREFIX/agent" "$PREFIX/firmware_configs" \
  "$PREFIX/pyproject.toml" "$PREFIX/README.md"; do
  [ -e "$old" ] || continue
  [ "$old" = "$venv" ] && continue
  run rm -rf "$old"
done

if [[ ",$extras," == *",report,"* ]] && ! ldconfig -p 2>/dev/null | grep -q 'libpango-1.0.so.0'; then
  echo "note: driftgate report --pdf needs Debian's libpango-1.0-0 (apt install libpango-1.0-0);"
  echo "      the HTML report and everything else work without it"
fi
if [ "$dry_run" -eq 1 ]; then
  echo "dry run: nothing was changed"
elif [ "$was_active" -eq 1 ]; then
  echo "driftgate $version installed and restarted: journalctl -u driftgate -f"
else
  cat <<EOF
driftgate $version installed. Next:
  sudoedit $CONF/agent.yaml
  sudo -u $USER_NAME driftgate check-config -c $CONF/agent.yaml
  sudo systemctl enable --now driftgate
  journalctl -u driftgate -f
EOF
fi
