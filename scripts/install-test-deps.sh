#!/usr/bin/env bash
# Installs the programs the end-to-end tests run, if they are missing:
# ffmpeg, nginx with libnginx-mod-rtmp, rtmpdump, haproxy, prometheus (and
# promtool), systemd-analyze, fail2ban-regex. Debian/Ubuntu only (apt). Extra package names may be passed as arguments.
set -euo pipefail

need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
command -v rtmpdump >/dev/null || need+=(rtmpdump)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v fail2ban-regex >/dev/null || need+=(fail2ban)
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

if [ ${#need[@]} -eq 0 ]; then
    echo "install-test-deps: everything is present"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-test-deps: missing ${need[*]} and no apt-get; install them by hand" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi
echo "install-test-deps: installing ${need[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian packages start nginx and haproxy as services; the tests run
# their own.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now nginx haproxy prometheus fail2ban >/dev/null 2>&1 || true
fi
echo "install-test-deps: done"
