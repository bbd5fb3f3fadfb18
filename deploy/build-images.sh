#!/usr/bin/env bash
# Builds the images of deploy/Dockerfile (targets mesh, runtime-builtin, runtime-mlserver) with whichever
# engine works here: docker (a daemon answers), else buildah, else podman. Run from anywhere; the build
# context is the repository root.
#
#   deploy/build-images.sh [--tag TAG] [--engine docker|buildah|podman] [--local-base] [TARGET ...]
#
#   --tag TAG      image tag (default dev): images are modelmesh-py/<target>:TAG (localhost/... for buildah)
#   --local-base   when the base image (PYTHON_IMAGE, default python:3.11-slim-bookworm) is neither present
#                  nor pullable, build an equivalent one from Debian packages with debootstrap (root) and
#                  use it: localhost/debian-python:3.11-bookworm (Debian's Python 3.11 + venv)
#
# Environment: PYTHON_IMAGE (base image), STORAGE_DRIVER (buildah/podman, default vfs: works without
# overlay support, e.g. inside a container), BUILD_CA_BUNDLE (a PEM bundle mounted over the build steps'
# CA bundle, for builds behind a TLS-intercepting proxy; default: pip's configured `cert`, if any).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG=dev
ENGINE=""
LOCAL_BASE=0
TARGETS=()
PYTHON_IMAGE="${PYTHON_IMAGE:-python:3.11-slim-bookworm}"
LOCAL_BASE_IMAGE=${LOCAL_BASE_IMAGE:-localhost/debian-python:3.11-bookworm}
STORAGE_DRIVER="${STORAGE_DRIVER:-vfs}"

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --engine) ENGINE="$2"; shift 2 ;;
        --local-base) LOCAL_BASE=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "error: unknown option $1" >&2; exit 2 ;;
        *) TARGETS+=("$1"); shift ;;
    esac
done
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(mesh runtime-builtin runtime-mlserver)

pick_engine() {
    if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; return; fi
    if command -v buildah >/dev/null && buildah --storage-driver "$STORAGE_DRIVER" images >/dev/null 2>&1; then
        echo buildah; return
    fi
    if command -v podman >/dev/null && podman --storage-driver "$STORAGE_DRIVER" images >/dev/null 2>&1; then
        echo podman; return
    fi
    return 1
}
if [[ -z "$ENGINE" ]]; then
    ENGINE=$(pick_engine) || {
        echo "error: no container engine works here: docker (no daemon answers), buildah, podman" >&2
        exit 3
    }
fi

have_image() {
    case "$ENGINE" in
        docker) docker image inspect "$1" >/dev/null 2>&1 ;;
        *) "$ENGINE" --storage-driver "$STORAGE_DRIVER" inspect --type image "$1" >/dev/null 2>&1 ;;
    esac
}
pull_image() {
    case "$ENGINE" in
        docker) docker pull -q "$1" >/dev/null 2>&1 ;;
        *) "$ENGINE" --storage-driver "$STORAGE_DRIVER" pull -q "$1" >/dev/null 2>&1 ;;
    esac
}

if ! have_image "$PYTHON_IMAGE" && ! pull_image "$PYTHON_IMAGE"; then
    if [[ $LOCAL_BASE -eq 0 ]]; then
        echo "error: base image $PYTHON_IMAGE is not here and cannot be pulled (try --local-base)" >&2
        exit 4
    fi
    if ! have_image "$LOCAL_BASE_IMAGE"; then
        command -v debootstrap >/dev/null || { echo "error: --local-base needs debootstrap" >&2; exit 4; }
        rootfs=$(mktemp -d)
        trap 'rm -rf "$rootfs" "$rootfs.tar"' EXIT
        echo "building $LOCAL_BASE_IMAGE with debootstrap (Debian bookworm, python3.11, venv)"
        debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-venv,ca-certificates \
            bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        case "$ENGINE" in
            docker) tar -C "$rootfs" -c . | docker import - "$LOCAL_BASE_IMAGE" >/dev/null ;;
            podman) tar -C "$rootfs" -c . | podman --storage-driver "$STORAGE_DRIVER" import - "$LOCAL_BASE_IMAGE" >/dev/null ;;
            buildah)
                ctr=$(buildah --storage-driver "$STORAGE_DRIVER" from scratch)
                tar -C "$rootfs" -cf "$rootfs.tar" .
                buildah --storage-driver "$STORAGE_DRIVER" add "$ctr" "$rootfs.tar" / >/dev/null
                buildah --storage-driver "$STORAGE_DRIVER" commit -q "$ctr" "$LOCAL_BASE_IMAGE" >/dev/null
                buildah --storage-driver "$STORAGE_DRIVER" rm "$ctr" >/dev/null
                rm -f "$rootfs.tar" ;;
        esac
    fi
    PYTHON_IMAGE="$LOCAL_BASE_IMAGE"
fi

# A CA bundle for the build steps (pip, apt) when a TLS-intercepting proxy is in the way; nothing of it is
# copied into the images (mounts exist only while a RUN step runs).
CA_BUNDLE="${BUILD_CA_BUNDLE:-$(python3 -m pip config list 2>/dev/null | sed -n "s/^global.cert='\(.*\)'$/\1/p" | head -1)}"
MOUNTS=()
if [[ -n "$CA_BUNDLE" && -f "$CA_BUNDLE" && "$ENGINE" != docker ]]; then
    pipconf=$(mktemp)
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$pipconf"
    MOUNTS=(-v "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" -v "$pipconf:/etc/pip.conf:ro")
fi

for target in "${TARGETS[@]}"; do
    image="modelmesh-py/$target:$TAG"
    echo "== $target -> $image (engine $ENGINE, base $PYTHON_IMAGE)"
    case "$ENGINE" in
        docker)
            docker build -f deploy/Dockerfile --target "$target" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$image" . ;;
        buildah)
            buildah --storage-driver "$STORAGE_DRIVER" bud --layers --isolation chroot --network host "${MOUNTS[@]}" \
                -f deploy/Dockerfile --target "$target" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "localhost/$image" . ;;
        podman)
            podman --storage-driver "$STORAGE_DRIVER" build --layers --isolation chroot --network host "${MOUNTS[@]}" \
                -f deploy/Dockerfile --target "$target" --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "localhost/$image" . ;;
        *) echo "error: unknown engine $ENGINE" >&2; exit 2 ;;
    esac
done
