#!/usr/bin/env bash
# Installs the programs the end-to-end tests run, if they are missing:
# ffmpeg, nginx with libnginx-mod-rtmp, rtmpdump, haproxy, prometheus (and
# promtool), systemd-analyze, fail2ban-regex, nft (kernel bans,
# tests/e2e_kernel_bans.rs), redis-server (fleet mode), chromium and
# chromedriver (the status page in a real browser, tests/e2e_status_page.rs),
# and for the interop matrix
# (tests/e2e_interop.rs) GStreamer (rtmp2, librtmp's rtmpsink, flv, libav),
# node and npm, python3 with venv. Debian/Ubuntu only (apt). Extra package
# names may be passed as arguments.
#
# Then, under target/interop (or $RTMP_GUARD_INTEROP_DIR), the interop
# peers that are not Debian packages: node-media-server from npm and the
# ffmpeg of the imageio-ffmpeg wheel from PyPI, in a venv. Each step is
# skipped when the pinned version is already there.
set -euo pipefail

NMS_VERSION=4.4.3
IMAGEIO_FFMPEG_VERSION=0.8.1
root="$(cd "$(dirname "$0")/.." && pwd)"
interop="${RTMP_GUARD_INTEROP_DIR:-$root/target/interop}"

need=()
# jemalloc (the guard's allocator) is built from source: a C compiler and make.
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] || need+=(libnginx-mod-rtmp)
command -v rtmpdump >/dev/null || need+=(rtmpdump)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v fail2ban-regex >/dev/null || need+=(fail2ban)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need+=(nftables)
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
command -v gst-launch-1.0 >/dev/null || need+=(gstreamer1.0-tools)
# rtmp2sink/rtmp2src, rtmpsink (librtmp) and h264parse are in -bad, flvmux
# and flvdemux in -good, avdec_h264 in -libav.
for pkg in gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done

install_interop_peers() {
    local nms_pkg="$interop/nms/node_modules/node-media-server/package.json"
    if [ "$(node -p 'require(process.argv[1]).version' "$nms_pkg" 2>/dev/null)" != "$NMS_VERSION" ]; then
        echo "install-test-deps: node-media-server@$NMS_VERSION into $interop/nms"
        mkdir -p "$interop/nms"
        npm install --prefix "$interop/nms" --no-audit --no-fund --omit=dev --loglevel=error \
            "node-media-server@$NMS_VERSION" >/dev/null
    fi
    local py="$interop/venv/bin/python"
    if ! "$py" -c "import imageio_ffmpeg, sys; sys.exit(imageio_ffmpeg.__version__ != '$IMAGEIO_FFMPEG_VERSION')" 2>/dev/null; then
        echo "install-test-deps: imageio-ffmpeg==$IMAGEIO_FFMPEG_VERSION into $interop/venv"
        python3 -m venv "$interop/venv"
        "$interop/venv/bin/pip" install --quiet --disable-pip-version-check "imageio-ffmpeg==$IMAGEIO_FFMPEG_VERSION"
    fi
}

if [ ${#need[@]} -eq 0 ]; then
    install_interop_peers
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
    $sudo systemctl disable --now nginx haproxy prometheus fail2ban redis-server >/dev/null 2>&1 || true
fi
install_interop_peers
echo "install-test-deps: done"
