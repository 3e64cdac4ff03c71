#!/bin/sh
# Makes the compose stack's secret files under deploy/secrets/ (once: an existing file is kept). Readable by the
# containers' own users through the bind mount, inside a folder only you can enter.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets
random() { python3 -c 'import secrets; print(secrets.token_hex(32))'; }
secret_file() {
    if [ ! -s "secrets/$1" ]; then
        printf '%s\n' "$2" > "secrets/$1"
        chmod 644 "secrets/$1"
        echo "made secrets/$1"
    fi
}
secret_file postgres_password "$(random)"
secret_file halo_database_url "postgresql://halo:$(cat secrets/postgres_password)@postgres:5432/halo"
secret_file halo_secret_key "$(random)"
secret_file demo_webhook_secret "$(random)"
secret_file grafana_admin_password "$(random)"
