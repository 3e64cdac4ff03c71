#!/bin/sh
# Installs HaloTrack as a systemd service from this checkout: the virtualenv /opt/halotrack, the unit, the user,
# /etc/halo with the example tenant file and a new secret key (each kept if already there). Run as root:
#   sh deploy/systemd/install.sh && systemctl enable --now halo-proxy
# DESTDIR=/some/root lays the files out there instead, without creating the user or calling systemctl.
set -eu
repo=$(cd "$(dirname "$0")/../.." && pwd)
root=${DESTDIR:-}
python=${PYTHON:-python3}

install -d -m 0755 "$root/opt" "$root/etc/systemd/system" "$root/usr/lib/sysusers.d"
install -d -m 0750 "$root/etc/halo"
if [ ! -x "$root/opt/halotrack/bin/halo-proxy" ]; then
    "$python" -m venv "$root/opt/halotrack"
fi
"$root/opt/halotrack/bin/python" -m pip install --quiet --disable-pip-version-check "$repo"
install -d -m 0755 "$root/opt/halotrack/deploy"
install -m 0644 "$repo/deploy/README.md" "$root/opt/halotrack/deploy/README.md"
install -m 0644 "$repo/deploy/systemd/halo-proxy.service" "$root/etc/systemd/system/halo-proxy.service"
install -m 0644 "$repo/deploy/systemd/halo-proxy.sysusers" "$root/usr/lib/sysusers.d/halo-proxy.conf"
[ -e "$root/etc/halo/tenants.yaml" ] || install -m 0644 "$repo/config/tenants.yaml" "$root/etc/halo/tenants.yaml"
[ -e "$root/etc/halo/env" ] || install -m 0600 "$repo/deploy/systemd/env.example" "$root/etc/halo/env"
if [ ! -s "$root/etc/halo/secret_key" ]; then
    (umask 077 && "$python" -c 'import secrets; print(secrets.token_hex(32))' > "$root/etc/halo/secret_key")
fi
if [ -z "$root" ]; then
    systemd-sysusers /usr/lib/sysusers.d/halo-proxy.conf
    systemctl daemon-reload
    echo "installed; edit /etc/halo/tenants.yaml (and /etc/halo/env), then: systemctl enable --now halo-proxy"
fi
