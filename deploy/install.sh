#!/usr/bin/env bash
# Install driftgate on a gateway as a systemd service (run as root from a checkout):
#   sudo ./deploy/install.sh
# Installs into /opt/driftgate (its own venv), config in /etc/driftgate, state in
# /var/lib/driftgate, the unit file from systemd/. Safe to run again to upgrade: an existing
# /etc/driftgate/agent.yaml is kept.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root: sudo $0" >&2; exit 1; }
src="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/opt/driftgate

id driftgate >/dev/null 2>&1 || useradd --system --home-dir /var/lib/driftgate --shell /usr/sbin/nologin --groups dialout driftgate
install -d -m 0755 "$prefix"
cp -a "$src/agent" "$src/pyproject.toml" "$src/README.md" "$prefix/"
[ -d "$src/firmware_configs" ] && cp -a "$src/firmware_configs" "$prefix/"
python3 -m venv "$prefix/.venv"
"$prefix/.venv/bin/pip" install --quiet --upgrade pip
"$prefix/.venv/bin/pip" install --quiet "$prefix"
ln -sf "$prefix/.venv/bin/driftgate" /usr/local/bin/driftgate

install -d -m 0750 -o root -g driftgate /etc/driftgate
if [ ! -f /etc/driftgate/agent.yaml ]; then
  install -m 0640 -o root -g driftgate "$src/deploy/agent.example.yaml" /etc/driftgate/agent.yaml
  echo "wrote /etc/driftgate/agent.yaml from the example: edit it, then run"
  echo "  driftgate check-config -c /etc/driftgate/agent.yaml"
fi
install -d -m 0750 -o driftgate -g driftgate /var/lib/driftgate
install -m 0644 "$src/systemd/driftgate.service" /etc/systemd/system/driftgate.service
systemctl daemon-reload
echo "installed. Start with: systemctl enable --now driftgate; logs: journalctl -u driftgate -f"
