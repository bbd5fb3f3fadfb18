#!/bin/sh
# Install Debian's Prometheus server for tests/integration/test_mesh_prometheus.py (run by its fixture when
# `prometheus` is not on PATH). Only the server binary is needed: no recommends (node exporter), and the
# package's own service is never used (the test runs its own on a free loopback port with a temp config).
set -eu
if command -v prometheus >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends prometheus >/dev/null
command -v prometheus
