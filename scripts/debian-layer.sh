#!/bin/sh
# The container layer of the Debian test and benchmark image, made the way image
# builders make one: apt-get install in a chroot over the minbase rootfs, and deletions
# that leave kernel whiteouts and opaque directories. Shared by tests/common/debian.rs
# and bench/bench.py, so that both build (and cache) the same image.
set -e
export DEBIAN_FRONTEND=noninteractive LC_ALL=C PATH=/usr/sbin:/usr/bin:/sbin:/bin
apt-get update
apt-get install -y --no-install-recommends file less
apt-get clean
rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/*
rm -rf /var/lib/apt/lists/*
rm -rf /etc/apt/apt.conf.d
mkdir /etc/apt/apt.conf.d
echo 'APT::Install-Recommends "false";' > /etc/apt/apt.conf.d/99norecommends
rm -rf /usr/share/locale
mkdir -p /usr/share/locale
echo recreated > /usr/share/locale/README
rm -f /usr/bin/rgrep /etc/issue.net
echo 'stratafs test layer' >> /etc/motd
chmod 700 /root
