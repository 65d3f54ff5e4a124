#!/usr/bin/env bash
# Install Debian's headless OpenGL for MuJoCo's offscreen rendering (tiller.control.render: the clips people
# compare). EGL (Mesa) first, OSMesa as the fallback tiller.control.render.gl_backend tries when EGL fails;
# without libosmesa6 MuJoCo's own error is a misleading "'NoneType' object has no attribute 'glGetError'".
set -euo pipefail
PKGS="libegl1 libgl1 libegl-mesa0 libgl1-mesa-dri libosmesa6"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
  echo "headless GL already installed ($PKGS)" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
# shellcheck disable=SC2086
$SUDO apt-get install -y -q --no-install-recommends $missing >&2
