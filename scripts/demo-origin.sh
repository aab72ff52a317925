#!/usr/bin/env bash
# Starts nginx-rtmp as a demo origin on 127.0.0.1:1936 (the default config's
# upstream), with its statistics page at http://127.0.0.1:8936/stat.
# Runs in the foreground; Ctrl-C stops it. Files live in a temp directory.
#
#   scripts/demo-origin.sh [RTMP_PORT] [HTTP_PORT]
set -euo pipefail
rtmp_port="${1:-1936}"
http_port="${2:-8936}"
module=/usr/lib/nginx/modules/ngx_rtmp_module.so
if ! command -v nginx >/dev/null || [ ! -f "$module" ]; then
    echo "nginx with libnginx-mod-rtmp is needed: scripts/install-test-deps.sh installs it" >&2
    exit 1
fi
dir="$(mktemp -d /tmp/rtmp-guard-origin.XXXXXX)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/logs" "$dir/tmp"
cat > "$dir/nginx.conf" <<CONF
load_module $module;
daemon off;
master_process off;
worker_processes 1;
error_log stderr warn;
pid $dir/nginx.pid;
events { worker_connections 1024; }
rtmp {
    server {
        listen 127.0.0.1:$rtmp_port;
        chunk_size 4096;
        application live {
            live on;
            record off;
        }
    }
}
http {
    access_log off;
    client_body_temp_path $dir/tmp;
    proxy_temp_path $dir/tmp;
    fastcgi_temp_path $dir/tmp;
    uwsgi_temp_path $dir/tmp;
    scgi_temp_path $dir/tmp;
    server {
        listen 127.0.0.1:$http_port;
        location /stat { rtmp_stat all; }
    }
}
CONF
echo "nginx-rtmp origin: rtmp://127.0.0.1:$rtmp_port/live, stats at http://127.0.0.1:$http_port/stat"
nginx -p "$dir" -c "$dir/nginx.conf"
