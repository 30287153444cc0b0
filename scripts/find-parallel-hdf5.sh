#!/usr/bin/env bash
# Find (or, as a last resort, install) an MPI compiler and a parallel HDF5, and
# print the environment that h5py's source build needs, one VAR=value a line.
#
# Order, so that a cluster's own libraries always win:
#   1. HDF5_DIR already set (environment modules) and built with parallel support;
#   2. a parallel HDF5 known to pkg-config (hdf5-openmpi, hdf5-mpich);
#   3. apt-get on Debian/Ubuntu, as root only.
set -euo pipefail

say() { echo "find-parallel-hdf5: $*" >&2; }

is_parallel_dir() {
    grep -qs 'define H5_HAVE_PARALLEL 1' "$1/include/H5pubconf.h" \
        || grep -qs 'define H5_HAVE_PARALLEL 1' "$1"/include/*/H5pubconf.h
}

find_existing() {
    if [ -n "${HDF5_DIR:-}" ]; then
        if is_parallel_dir "$HDF5_DIR"; then
            echo "HDF5_DIR=$HDF5_DIR"
            return 0
        fi
        say "HDF5_DIR=$HDF5_DIR is not a parallel HDF5 build (no H5_HAVE_PARALLEL); looking elsewhere"
    fi
    if command -v pkg-config >/dev/null; then
        for name in hdf5-openmpi hdf5-mpich; do
            if pkg-config --exists "$name"; then
                echo "HDF5_PKGCONFIG_NAME=$name"
                return 0
            fi
        done
    fi
    return 1
}

if ! command -v mpicc >/dev/null || ! found=$(find_existing); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "no MPI compiler or parallel HDF5 found; installing Open MPI and HDF5 (openmpi) with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config >&2
        found=$(find_existing) || { say "apt-get finished but no parallel HDF5 is visible to pkg-config"; exit 1; }
    else
        say "no MPI compiler (mpicc) or parallel HDF5 found. On a cluster, load your MPI and"
        say "parallel HDF5 modules first (mpicc on PATH, HDF5_DIR set); on Debian/Ubuntu run as root"
        say "or install: openmpi-bin libopenmpi-dev libhdf5-openmpi-dev pkg-config"
        exit 1
    fi
fi
echo "CC=mpicc"
echo "HDF5_MPI=ON"
echo "$found"
