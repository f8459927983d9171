#!/usr/bin/env bash
# Makes a Debian bookworm image with Python 3.11 from Debian's own packages, for machines that
# reach Debian's package archive but no container image registry:
#   debootstrap --variant=minbase bookworm (+ python3, python3-venv, python3-pip, ca-certificates)
#   then `docker import`. Usage: docker/base-image.sh [IMAGE_NAME]   (root; about a minute)
set -euo pipefail
name="${1:-loyalty-moengage/bookworm-python:3.11}"
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name: already there"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap missing (apt-get install -y debootstrap)" >&2; exit 1; }
root="$(mktemp -d /var/tmp/loyalty-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "base image $name: debootstrap bookworm into $root ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$root" http://deb.debian.org/debian >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# apt inside later builds: no recommends, clean caches
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$name" >/dev/null
echo "base image $name: imported ($(docker image inspect -f '{{.Size}}' "$name" | numfmt --to=iec))"
