#!/bin/sh
# Writes the secret files deploy/compose.yaml mounts, with fresh random passwords and keys, into deploy/secrets/
# (or the folder given). Files that exist are kept, so running it again changes nothing; delete a file to renew it
# (then restart the services that use it: see deploy/README.md, "Rotating secrets").
# The folder is 0700, so only its owner reads the secrets on the host; the files inside are 0644 because
# Compose bind-mounts them as they are, and the containers' users (dataops 10001, redis, postgres) must read them.
set -eu
dir=${1:-"$(cd "$(dirname "$0")" && pwd)/secrets"}
mkdir -p "$dir"; chmod 700 "$dir"
rand() { python3 -c 'import secrets, sys; print(secrets.token_urlsafe(int(sys.argv[1])))' "$1"; }
put() {  # put NAME CONTENT: write the file unless it exists
  [ -e "$dir/$1" ] && return 0
  umask 022; printf '%s\n' "$2" > "$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1"; echo "wrote $dir/$1"
}
val() { sed -n "${2:-1}p" "$dir/$1"; }
put redis_password "$(rand 32)"
put postgres_password "$(rand 32)"
put s3_access_key "dataops-$(rand 9)"
put s3_secret_key "$(rand 32)"
put jwt_secret "$(rand 48)"
put admin_password "$(rand 18)"
# derived files: the same passwords in the form each consumer reads
put redis.conf "$(printf 'requirepass %s\nappendonly yes\nappendfsync everysec\nsave 3600 1 300 100 60 10000' "$(val redis_password)")"
put redis_url "redis://:$(val redis_password)@redis:6379/0"
put postgres_url "postgresql://dataops:$(val postgres_password)@postgres:5432/dataops"
put s3_credentials "$(printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s' "$(val s3_access_key)" "$(val s3_secret_key)")"
echo "secrets in $dir; the first administrator is 'admin' with the password in $dir/admin_password"
