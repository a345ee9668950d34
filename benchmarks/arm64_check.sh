#!/usr/bin/env bash
# arm64 proof: edgetl-run installs from PyPI's aarch64 wheels and predicts like x86 does.
#
# Builds (once, cached) an arm64 Debian userland from Debian's own packages (debootstrap, run through
# qemu-user-static via binfmt_misc), installs deploy/ there with its aarch64 wheels, makes bundles on
# x86 from real data with edgetl's own commands, runs `edgetl-run predict --json` on the same files on
# both sides and writes benchmarks/results/arm64.json (same top-1 count, max |dprob| per bundle).
# Emulated timings are not latencies: none are recorded. Phase durations go to stderr.
#
#   sudo benchmarks/arm64_check.sh            # root: debootstrap, chroot and mounts need it
#
# Environment (defaults in brackets):
#   EDGETL_ARM64_ROOT    userland cache [/var/tmp/edgetl-arm64]; remove it to rebuild from scratch
#   EDGETL_ARM64_SUITE   Debian suite [bookworm]     EDGETL_ARM64_MIRROR  [http://deb.debian.org/debian]
#   EDGETL_ARM64_CPU     CPU qemu emulates: cortex-a72 (Raspberry Pi 4) or cortex-a76 (Pi 5) [cortex-a72]
#   EDGETL_ARM64_IMAGES  held-out photos per class per image bundle [10]  (sign-digits: 10 classes)
#   EDGETL_ARM64_TEXTS   held-out articles per class [10]                 (bbc-news: 5 classes)
#   EDGETL_DATA          the real data sets [../shared/data]
#   EDGETL_ARM64_KEEP=1  keep the work folder (bundles, inputs, both sides' predictions)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT="$(cd "$HERE/.." && pwd)"
CACHE="${EDGETL_ARM64_ROOT:-/var/tmp/edgetl-arm64}"
SUITE="${EDGETL_ARM64_SUITE:-bookworm}"
MIRROR="${EDGETL_ARM64_MIRROR:-http://deb.debian.org/debian}"
CPU="${EDGETL_ARM64_CPU:-cortex-a72}"
IMAGES_PER_CLASS="${EDGETL_ARM64_IMAGES:-10}"
TEXTS_PER_CLASS="${EDGETL_ARM64_TEXTS:-10}"
DATA="${EDGETL_DATA:-$PROJECT/../shared/data}"
RESULT="$PROJECT/benchmarks/results/arm64.json"
ROOT="$CACHE/root"
VENV=/opt/edgetl-venv
INSIDE=/tmp/edgetl-check # the work folder's path inside the userland

die() { echo "arm64_check: $*" >&2; exit 1; }
log() { echo "arm64_check: $*" >&2; }
started=$SECONDS phase_start=$SECONDS phase_name="checks and mounts"
phase() { # the previous phase's duration, then the next one's name
    log "$phase_name: $((SECONDS - phase_start)) s"
    phase_name="$1" phase_start=$SECONDS
    log "$phase_name ..."
}

[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mount need it)"
for tool in debootstrap qemu-aarch64-static chroot mountpoint uv; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap qemu-user-static)"
done
[[ -d "$DATA/sign-digits" && -d "$DATA/bbc-news" ]] || die "no sign-digits/ and bbc-news/ under $DATA"
case "$CPU" in # what the kernel of such a board shows in /proc/cpuinfo (see mount_userland)
    cortex-a72) cpu_part=0xd08 cpu_variant=0x0 cpu_features="fp asimd evtstrm crc32 cpuid" ;;
    cortex-a76) cpu_part=0xd0b cpu_variant=0x4
        cpu_features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp" ;;
    *) die "EDGETL_ARM64_CPU=$CPU: cortex-a72 or cortex-a76" ;;
esac

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/edgetl-arm64-work.XXXXXX")"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local m
    for m in "$ROOT$INSIDE" "$ROOT/proc/cpuinfo" "$ROOT/proc" "$ROOT/sys" "$ROOT/dev"; do
        if mountpoint -q "$m" 2>/dev/null; then umount "$m" || umount -l "$m"; fi
    done
    # Only after the mounts are gone: the bind-mounted /dev must never be under an rm -rf.
    if [ -d "$ROOT$INSIDE" ] && ! mountpoint -q "$ROOT$INSIDE"; then rmdir "$ROOT$INSIDE"; fi
    if [ "${EDGETL_ARM64_KEEP:-0}" = 1 ]; then log "work folder kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# --- binfmt_misc: lets the kernel hand every aarch64 executable to qemu, also the ones dpkg and pip
# start themselves, which running the chroot's first binary through qemu by hand cannot reach.
ensure_binfmt() {
    local d=/proc/sys/fs/binfmt_misc
    [ -e "$d/status" ] || mount -t binfmt_misc binfmt_misc "$d" ||
        die "cannot mount binfmt_misc; the emulated userland needs it"
    if ! grep -qs '^enabled' "$d/qemu-aarch64"; then
        # Debian's own rule (the one systemd-binfmt loads at boot). Its F flag opens qemu now, so the
        # chroot needs no copy of it.
        sed -e 's/#.*//' -e '/^$/d' /usr/lib/binfmt.d/qemu-aarch64.conf >"$d/register" ||
            die "the kernel refused the qemu-aarch64 binfmt rule"
        log "registered binfmt qemu-aarch64 (stays registered until reboot)"
    fi
}

mount_userland() {
    mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
    mountpoint -q "$ROOT/sys" || mount -t sysfs sysfs "$ROOT/sys"
    mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
    # qemu 7.2 (bookworm) passes the host's x86 /proc/cpuinfo through, and onnxruntime's cpuinfo
    # library crashes parsing it next to an arm64 /sys; newer qemu fakes this file the same way.
    local n
    n="$(nproc)"
    for ((i = 0; i < n; i++)); do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\n' "$i" "$cpu_features"
        printf 'CPU architecture: 8\nCPU variant\t: %s\nCPU part\t: %s\nCPU revision\t: 0\n\n' "$cpu_variant" "$cpu_part"
    done >"$WORK/cpuinfo"
    mountpoint -q "$ROOT/proc/cpuinfo" || mount --bind "$WORK/cpuinfo" "$ROOT/proc/cpuinfo"
    mkdir -p "$ROOT$INSIDE"
    mountpoint -q "$ROOT$INSIDE" || mount --bind "$WORK" "$ROOT$INSIDE"
}

# A clean environment: nothing of the host's (PATH, PIP_*, venvs) leaks into the arm64 side.
in_arm() {
    chroot "$ROOT" /usr/bin/env -i QEMU_CPU="$CPU" HOME=/root LANG=C.UTF-8 \
        PATH="$VENV/bin:/usr/sbin:/usr/bin:/sbin:/bin" "$@"
}
x86() { (cd "$PROJECT" && nice -n 10 uv run --frozen "$@"); }
helper() { x86 python "$HERE/arm64_helper.py" "$@"; }

log "userland $ROOT ($SUITE arm64, emulating $CPU); work folder $WORK"
ensure_binfmt

# --- 1. the userland, once: debootstrap into a .partial folder, renamed when complete
if [ ! -e "$ROOT/.edgetl-userland" ]; then
    phase "building the $SUITE arm64 userland with debootstrap (once; cached in $CACHE)"
    partial="$CACHE/root.partial"
    if [ -e "$partial" ]; then
        # debootstrap mounts proc and sys inside its target; an interrupted one may have left them.
        findmnt -rn -o TARGET | grep -q "^$partial/" && die "$partial has mounts under it; unmount them first"
        rm -rf "$partial"
    fi
    mkdir -p "$CACHE"
    nice -n 10 debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
        "$SUITE" "$partial" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $CACHE/debootstrap.log"
    echo "$SUITE arm64 $MIRROR $(date -u +%FT%TZ)" >"$partial/.edgetl-userland"
    mv "$partial" "$ROOT"
fi
mount_userland
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# pip inside reaches the index as the host's pip does: its config and CA files, less host-only folders.
helper pip-config "$ROOT"

# --- 2. the runtime: the wheel built here from deploy/, its dependencies from PyPI's aarch64 wheels
phase "installing deploy/ in the userland"
mkdir -p "$WORK/wheel"
(cd "$PROJECT" && uv build --quiet --package edgetl-runtime --wheel --out-dir "$WORK/wheel")
wheel="$(basename "$WORK"/wheel/edgetl_runtime-*.whl)"
# uv.lock's versions as constraints (pip has no use for the workspace's own editable lines).
(cd "$PROJECT" && uv export --quiet --frozen --all-packages --all-extras --no-hashes) |
    grep -vE '^\s*(#|-e |$)' >"$WORK/constraints.txt"
extras="text"
# The litert extra arrives with LiteRT support; until then ai-edge-litert is named on its own.
grep -q '^litert *=' "$PROJECT/deploy/pyproject.toml" && extras="text,litert"
deps_key="$(cat "$WORK/constraints.txt" "$PROJECT/deploy/pyproject.toml" "$ROOT/etc/pip.conf" | sha256sum | cut -c1-16)"
if [ "$(cat "$ROOT$VENV/.edgetl-deps" 2>/dev/null)" != "$deps_key" ]; then
    [ -x "$ROOT$VENV/bin/python" ] || in_arm python3 -m venv "$VENV"
    # --only-binary: a missing aarch64 wheel is an error here, not an hour of compiling under qemu.
    # A uv.lock pin pip cannot meet on this Python and CPU (no such wheel) is dropped, said, and retried.
    for attempt in 1 2 3 4 5; do
        # not --quiet: pip names the constraint behind a conflict only in its full output
        if in_arm pip install --only-binary :all: -c "$INSIDE/constraints.txt" \
            "$INSIDE/wheel/${wheel}[$extras]" ai-edge-litert >"$WORK/pip.log" 2>&1; then
            break
        fi
        unmet="$(sed -nE 's/.*The user requested \(constraint\) ([^ ]+==[^ ]+).*/\1/p' "$WORK/pip.log" | sort -u)"
        if [ -z "$unmet" ] || [ "$attempt" = 5 ]; then tail -n 30 "$WORK/pip.log" >&2; die "pip install failed"; fi
        for pin in $unmet; do
            log "uv.lock's $pin cannot be installed on arm64 here: left to pip"
            grep -vxF "$pin" "$WORK/constraints.txt" >"$WORK/constraints.new" || true
            mv "$WORK/constraints.new" "$WORK/constraints.txt"
        done
    done
    echo "$deps_key" >"$ROOT$VENV/.edgetl-deps"
fi
# Forced: deploy/ changes without its version number, and pip keeps an installed version as it is.
in_arm pip install --quiet --no-deps --force-reinstall "$INSIDE/wheel/$wheel"
in_arm python -c 'from ai_edge_litert.interpreter import Interpreter; import tokenizers, onnxruntime' ||
    die "the runtime's libraries do not import on arm64"
if in_arm python -c 'import torch' 2>/dev/null; then die "torch is importable in the runtime's venv"; fi
cp "$HERE/arm64_helper.py" "$WORK/helper.py"
in_arm python "$INSIDE/helper.py" versions >"$WORK/versions-arm64.json"
helper versions >"$WORK/versions-x86.json"
log "arm64: $(cat "$WORK/versions-arm64.json")"
log "x86:   $(cat "$WORK/versions-x86.json")"

# --- 3. bundles, made on x86 by edgetl itself from real data
phase "training and packaging on x86: sign-digits (efficientnet_lite0) and bbc-news (all-minilm-l6-v2)"
mkdir -p "$WORK/bundles" "$WORK/out" "$WORK/results"
# 40 + 10 photos per class train and gate; the next IMAGES_PER_CLASS are the held-out inputs.
image_classes="$(helper split "$DATA/sign-digits" "$WORK/digits" 40 10 "$IMAGES_PER_CLASS")"
text_classes="$(helper split "$DATA/bbc-news" "$WORK/news" 40 10 "$TEXTS_PER_CLASS")"
# 112 px: the photos are 100x100, so 224 would only upscale them, at four times the compute.
x86 edgetl train --data "$WORK/digits/data" --out "$WORK/digits/run" --image-size 112 \
    --frozen-epochs 8 --epochs 0 --no-hflip >/dev/null
x86 edgetl export "$WORK/digits/run" --max-check-images 64 >/dev/null
x86 edgetl quantize "$WORK/digits/run" --method minmax --num-calibration 200 >/dev/null
x86 edgetl package "$WORK/digits/run" --precision fp32 --out "$WORK/bundles/digits-onnx-fp32.tar.gz" >/dev/null
x86 edgetl package "$WORK/digits/run" --precision int8 --out "$WORK/bundles/digits-onnx-int8.tar.gz" >/dev/null
if x86 edgetl export --help | grep -q litert; then
    x86 edgetl export "$WORK/digits/run" --format litert >/dev/null
    x86 edgetl quantize "$WORK/digits/run" --backend litert --num-calibration 200 >/dev/null
    x86 edgetl package "$WORK/digits/run" --format litert --precision int8 \
        --out "$WORK/bundles/digits-litert-int8.tar.gz" >/dev/null
else
    helper skip digits-litert-int8 litert int8 "this edgetl has no \`edgetl export --format litert\` yet (LiteRT support not merged)" \
        "$WORK/results/digits-litert-int8.json"
fi
x86 edgetl train --data "$WORK/news/data" --out "$WORK/news/run" --backbone all-minilm-l6-v2 \
    --frozen-epochs 20 --epochs 0 >/dev/null
x86 edgetl export "$WORK/news/run" --max-check-images 32 >/dev/null
x86 edgetl quantize "$WORK/news/run" --method dynamic >/dev/null
x86 edgetl package "$WORK/news/run" --precision int8 --out "$WORK/bundles/news-onnx-int8.tar.gz" >/dev/null

# --- 4. the same bundles and files on both sides
for bundle in "$WORK"/bundles/*.tar.gz; do
    name="$(basename "$bundle" .tar.gz)" # KIND-FORMAT-PRECISION
    IFS=- read -r kind format precision <<<"$name"
    if [ "$kind" = news ]; then classes=$text_classes; else classes=$image_classes; fi
    phase "predicting $name on x86 and on arm64 (emulated: slow, and not a latency)"
    # --top-k as the class count: every class's probability, to compare them all.
    x86 edgetl-run predict "$bundle" "$WORK/$kind/inputs" --json --top-k "$classes" >"$WORK/out/$name-x86.json"
    in_arm edgetl-run predict "$INSIDE/bundles/$name.tar.gz" "$INSIDE/$kind/inputs" --json --top-k "$classes" \
        >"$WORK/out/$name-arm64.json"
    helper compare "$name" "$format" "$precision" "$WORK/out/$name-x86.json" "$WORK/out/$name-arm64.json" \
        "$WORK/versions-x86.json" "$WORK/versions-arm64.json" "$WORK/results/$name.json"
done

phase "writing $RESULT"
status=0
helper report "$WORK/results" "$RESULT" || status=$?
phase "done"
log "total: $((SECONDS - started)) s"
exit "$status"
